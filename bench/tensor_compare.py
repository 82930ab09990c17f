"""Where a zoo model's fidelity goes, tensor by tensor, against onnxruntime's ``quantize_static``, same data:

    .venv-ort/bin/python bench/tensor_compare.py MODEL [--config '{"align_scales": false}'] [--every 2]

Both quantized models run on the fidelity bench's evaluation crops (``bench/fidelity.py``'s protocol: every
``--every``-th of them) beside the float model; for every float tensor both computed, the table has its
SQNR in each, pooled over the crops and the median of the crops' own, and the difference. onnxsq's value of
a quantized tensor is read before its own QuantizeLinear (``<name>_prequant``, as onnxruntime's original
name is), and with the least-squares gain to the float tensor (an aligned domain holds ``a`` times it).
onnxruntime: the better of per-tensor / per-channel weights (no pre-processing). Shape and constant
tensors are left out. The first row where onnxsq falls behind is usually where to look.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from zoo.cli_args import bench_images, crops, samples  # noqa: E402
from zoo.measure import fidelity, ort_quantize  # noqa: E402

SKIP_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Constant", "Cast", "Reshape", "Transpose", "Concat",
            "Split", "Slice", "Size", "Range", "Equal", "If")


def with_outputs(path: Path, names: list[str], out: Path) -> None:
    """``path`` with every tensor of ``names`` it computes added as a float graph output, saved to ``out``."""
    import onnx

    m = onnx.load(path)
    have = {o for n in m.graph.node for o in n.output}
    outs = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in names if t in have and t not in outs)
    onnx.save(m, out)


def float_tensors(path: Path) -> tuple[list[str], dict[str, str]]:
    """The float32 tensors the model's nodes compute (by shape inference), in order, and each one's op."""
    import onnx

    m = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(m)
    floats = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    ops = {o: n.op_type for n in m.graph.node for o in n.output}
    return [o for n in m.graph.node for o in n.output if o in floats and n.op_type not in SKIP_OPS], ops


def _run(path: Path, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    from onnxsq.runtime import make_session

    s = make_session(str(path))
    names = [o.name for o in s.get_outputs()]
    return [dict(zip(names, s.run(None, f))) for f in feeds]


def _db(signal: float, noise: float) -> float:
    return float(10 * np.log10(signal / max(noise, 1e-30))) if signal > 0 else float("nan")


def compare(name: str, config: dict, every: int) -> list[tuple]:
    """(op, tensor, ours pooled, ORT pooled, ours median, ORT median) per tensor, in graph order."""
    from onnxsq.model_io import save_model
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    m = next(m for m in zoo.ensure(check=False) if m.name == name)
    tmp = Path(tempfile.mkdtemp(prefix="onnxsq-compare-"))
    imgs = bench_images(m, zoo.images()[:26], tmp / m.name)
    calib, feeds = samples(m, imgs, 9), crops(m, imgs[9:26], per_image=4)[::every]
    ours = tmp / "ours.onnx"
    save_model(quantize(m.path, iter(calib), config=QuantizeConfig(**config))[0], ours)
    best = None
    for per_channel in (False, True):
        p = tmp / f"ort{int(per_channel)}.onnx"
        try:
            ort_quantize(m.path, p, calib, per_channel)
            sq = fidelity(m.path, p, feeds)[0]
        except Exception as e:  # noqa: BLE001 - a variant onnxruntime cannot make or run
            print(f"# onnxruntime per_channel={per_channel}: {str(e)[:100]}", file=sys.stderr)
            continue
        best = max(best or (sq, p), (sq, p), key=lambda b: b[0])
    print(f"# output SQNR: onnxsq {fidelity(m.path, ours, feeds)[0]:.2f}, onnxruntime {best[0]:.2f}", file=sys.stderr)
    names, ops = float_tensors(m.path)
    import onnx

    made = {o for n in onnx.load(ours).graph.node for o in n.output}
    mine = {t: (f"{t}_prequant" if f"{t}_prequant" in made else t) for t in names}
    tapped = [tmp / f"{tag}.all.onnx" for tag in ("float", "ours", "ort")]  # (never beside the zoo's file)
    for path, want, out in zip((Path(m.path), ours, best[1]), (names, list(mine.values()), names), tapped):
        with_outputs(path, want, out)
    ref, got, theirs = (_run(p, feeds) for p in tapped)
    rows = []
    for t in names:
        per = [(a[t].astype(np.float64).ravel(), b[mine[t]].astype(np.float64).ravel(),
                c[t].astype(np.float64).ravel()) for a, b, c in zip(ref, got, theirs)
               if t in a and mine[t] in b and t in c and a[t].size == b[mine[t]].size == c[t].size]
        if not per:
            continue
        xy, yy = sum(float(x @ y) for x, y, _ in per), sum(float(y @ y) for _, y, _ in per)
        g = xy / yy if yy else 1.0
        sig = [float(x @ x) for x, _, _ in per]
        n_ours = [float(np.sum((x - g * y) ** 2)) for x, y, _ in per]
        n_ort = [float(np.sum((x - z) ** 2)) for x, _, z in per]
        rows.append((ops[t], t, _db(sum(sig), sum(n_ours)), _db(sum(sig), sum(n_ort)),
                     float(np.nanmedian([_db(s, n) for s, n in zip(sig, n_ours)])),
                     float(np.nanmedian([_db(s, n) for s, n in zip(sig, n_ort)]))))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a zoo model name")
    ap.add_argument("--config", default="{}", help="QuantizeConfig overrides as JSON")
    ap.add_argument("--every", type=int, default=2, help="every n-th evaluation crop (68 in all)")
    args = ap.parse_args(argv)
    print("| op | tensor | onnxsq pooled | ORT pooled | Δ | onnxsq median | ORT median | Δ |")
    print("|---|---|---|---|---|---|---|---|")
    for op, t, a, b, c, d in compare(args.model, json.loads(args.config), args.every):
        print(f"| {op} | {t[-60:]} | {a:.2f} | {b:.2f} | {a - b:+.2f} | {c:.2f} | {d:.2f} | {c - d:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
