"""Where onnxsq's training step spends its time: per-phase timers around one Trainer's methods.

Used by ``bench/bench_train.py --profile``. Process CPU time (a loaded machine does not inflate it;
with one thread it is the work done), the median over the steps after the first few. Phases: the
onnxruntime train step (forward + backward,
feeds in, loss out), the optimizer update (numpy), writing the weights back into onnxruntime's state,
sparsity bookkeeping, the gradient reset, waiting for the next batch; "other" is the rest of the loop.
``--ort-ops`` adds onnxruntime's own per-operator profile of the train step, grouped by op type.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import numpy as np

from onnxsq.data.classification import ArrayDataset
from onnxsq.training.config import TrainConfig
from onnxsq.training.loop import Trainer


def _timed(times: dict[str, list[float]], name: str, fn):
    def wrapper(*a, **k):
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            times[name].append(time.process_time() - t)
    return wrapper


class _Module:
    """A proxy of onnxruntime's Module timing its train step and gradient reset."""

    def __init__(self, module, times: dict[str, float]) -> None:
        self._m, self._t = module, times

    def __call__(self, *a):
        return _timed(self._t, "ort train step", self._m)(*a)

    def lazy_reset_grad(self):
        return _timed(self._t, "grad reset", self._m.lazy_reset_grad)()

    def __getattr__(self, name):
        return getattr(self._m, name)


class ProfiledTrainer(Trainer):
    def __init__(self, *a, ort_profile: str | None = None, **k) -> None:
        super().__init__(*a, **k)
        self.times: dict[str, list[float]] = defaultdict(list)  # process CPU seconds per call
        self.ort_profile = ort_profile

    def _session_options(self, ort):
        opts = super()._session_options(ort)
        if self.ort_profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = self.ort_profile
        return opts

    def _open(self, workdir) -> None:
        super()._open(workdir)
        t = self.times
        self.module = _Module(self.module, t)
        for name, label in (("_update", "update (numpy)"), ("_write_weights", "write weights to ORT"),
                            ("_after_step", "logging/checkpoint hooks")):
            setattr(self, name, _timed(t, label, getattr(self, name)))
        self.sparsity.after_update = _timed(t, "sparsity bookkeeping", self.sparsity.after_update)
        stream = self.loader.stream

        def timed_stream(*a, **k):
            it = stream(*a, **k)
            try:
                while True:
                    start = time.process_time()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    t["next batch (loader)"].append(time.process_time() - start)
                    yield item
            finally:
                it.close()

        self.loader.stream = timed_stream


def _ort_ops(prefix: str) -> dict[str, float]:
    """Seconds per op type in onnxruntime's profile files starting with ``prefix``."""
    out: dict[str, float] = defaultdict(float)
    for path in glob.glob(prefix + "*.json"):
        with open(path) as f:
            events = json.load(f)
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                out[e.get("args", {}).get("op_name", "?")] += e["dur"] / 1e6
        os.remove(path)
    return dict(out)


def profile_phases(model, x, y, *, iters: int, batch: int, lr: float, optimizer: str,
                   ort_ops: bool = False, threads: int = 0) -> dict[str, Any]:
    cfg = TrainConfig(iters=iters, batch_size=batch, lr=lr, optimizer=optimizer, momentum=0.9, weight_decay=1e-4,
                      display=0, device="cpu", threads=threads)
    prefix = os.path.join(tempfile.mkdtemp(prefix="onnxsq-prof-"), "ort") if ort_ops else None
    trainer = ProfiledTrainer(model, ArrayDataset(x, y), cfg, ort_profile=prefix)
    steps: list[float] = []
    last = [time.process_time()]

    def tick(_s) -> None:
        now = time.process_time()
        steps.append(now - last[0])
        last[0] = now

    trainer.on_step = tick
    trainer.run()
    skip = min(5, iters // 4)  # warm-up steps
    out: dict[str, Any] = {k: float(np.median(v[skip:])) for k, v in trainer.times.items()}
    total = float(np.median(steps[skip:]))
    out["other"] = total - sum(out.values())
    out["total"] = total
    if prefix:  # onnxruntime writes its profile when the session goes
        import gc

        trainer.module = trainer.state = trainer.params = None
        del trainer
        gc.collect()
        out["ort_ops"] = {k: v / iters for k, v in sorted(_ort_ops(prefix).items(), key=lambda kv: -kv[1])}
    return out
