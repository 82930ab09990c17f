"""The fine-tuning run in its own process: ``python -m onnxsq.training.finetune_child IN OUT`` reads the
pickled run from IN and writes ``(True, (weights, losses))`` or ``(False, reason)`` to OUT (a native crash
writes nothing: the parent reports the signal). See :func:`onnxsq.training.finetune.train_student`."""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path


def main(src: str, dst: str) -> int:
    import onnx

    from ..errors import OnnxsqError, first_line
    from .finetune import out_ndim, quant_steps
    from .finetune_loop import StudentRun

    data, plan, tparams, xs, targets, masks, cfg, feats = pickle.loads(Path(src).read_bytes())
    try:
        model = onnx.ModelProto.FromString(data)
        run = StudentRun(model, plan, tparams, xs, targets, cfg, feats)
        with tempfile.TemporaryDirectory(prefix="onnxsq-finetune-") as tmp:
            losses = run.train(Path(tmp), xs, targets, masks, quant_steps(plan, tparams, out_ndim(model)))
            result = (True, (run.values(), losses))
    except OnnxsqError as exc:
        result = (False, first_line(exc))
    Path(dst).write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
