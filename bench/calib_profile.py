"""Where onnxsq's calibration time goes, per sample, on the ResNet-50-sized model (bench/resnet50.py):

    .venv-ort/bin/python bench/calib_profile.py [--samples 8] [--rounds 3] [--threads 1]

Captures the exact skeleton, weights and observed tensors ``quantize`` calibrates (its defaults), then
times, alternating rounds (medians; CPU time of the process, which counts every onnxruntime thread):

- ``forward``: the original float model, onnxruntime all graph optimizations (the reference);
- ``fed``: the calibration skeleton with its weights fed, optimizations off, no extra outputs;
- ``fed+outputs``: the same fetching every observed tensor (the histogram path's run);
- ``stats (numpy)``: :meth:`TensorStats.update` on those arrays, split into its parts;
- ``collect auto`` (every value binned, or large tensors' strided subsample:
  :mod:`onnxsq.calibration.sampling`) / ``collect minmax``: :func:`collect_stats` per sample in the
  steady state (its first sample, with the session build, apart);
- and the fixed phases of one whole ``quantize`` (its phase clock).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

COLLECT_N = 8  # samples per collect_stats call timed
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def cpu_wall(fn, repeats: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``fn``, after one warm-up call."""
    fn()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.process_time() - c0) / repeats * 1e3, (time.perf_counter() - t0) / repeats * 1e3


def capture(model, xs):
    """(skeleton, weights, observed names, means) that quantize's calibration gets, and its phase laps."""
    import onnxsq.passes.quantize.ptq as ptq
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    got: dict = {}
    real = ptq.collect_stats

    def spy(float_model, names, batches, **kw):
        got.update(model=float_model, names=list(names), weights=kw["weights"], means=kw.get("means"),
                   histogram=kw["histogram"])
        return real(float_model, names, batches, **kw)

    laps: dict = {}

    class Laps(logging.Handler):
        def emit(self, record):
            if record.msg.startswith("quantize phases"):
                laps.update(record.args[0] if isinstance(record.args, tuple) else record.args)

    lg = logging.getLogger("onnxsq.passes.quantize.ptq")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(Laps())
    ptq.collect_stats = spy
    try:
        quantize(model, ({"input": x} for x in xs), config=QuantizeConfig())
    finally:
        ptq.collect_stats = real
    return got, laps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8, help="runs timed per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = ap.parse_args()
    import onnxruntime as ort
    from resnet50 import build_resnet50

    from onnxsq.calibration import collect, sampling
    from onnxsq.calibration.stats import BINS, TensorStats
    from onnxsq.runtime import FedSession

    model = build_resnet50(seed=0, opset=13)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(args.samples)]
    got, laps = capture(model, xs)
    names, skel, weights = got["names"], got["model"], got["weights"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fed = FedSession(skel, weights, in_node_order=True, intra_op_threads=args.threads, spin=False)
    outs = FedSession(collect.with_outputs(skel, names), weights, in_node_order=True,
                      intra_op_threads=args.threads, spin=False)
    arrays = outs.run(names, {"input": xs[0]})
    values = sum(a.size for a in arrays)
    it = iter(range(10**9))

    def feed():
        return {"input": xs[next(it) % len(xs)]}

    def stats_part(part: str):
        def run():
            for a in arrays:
                f = a.ravel()
                if part == "minmax":
                    f.min(), f.max()
                elif part == "zeros":
                    np.count_nonzero(f)
                elif part == "index":
                    idx = np.empty(f.size, np.intp)
                    np.multiply(f, np.float32(BINS / 64), out=idx, casting="unsafe")
                elif part == "update":
                    TensorStats(histogram=True).update(a)
        return run

    def collect_run(hist: bool, strides: tuple = sampling.STRIDES, optimize: bool = True):
        """(CPU ms, wall ms) per sample in the steady state (median over samples 2..N of one call), and the
        CPU ms of the first sample (session build included)."""
        def run():
            keep = sampling.STRIDES, collect.OPTIMIZE
            sampling.STRIDES, collect.OPTIMIZE = strides, optimize
            marks = [(time.process_time(), time.perf_counter())]
            try:
                collect.collect_stats(skel, names, [(feed(), 1) for _ in range(COLLECT_N)], histogram=hist,
                                      weights=weights, threads=args.threads,
                                      progress=lambda *_: marks.append((time.process_time(), time.perf_counter())))
            finally:
                sampling.STRIDES, collect.OPTIMIZE = keep
            d = np.diff(np.array(marks), axis=0) * 1e3
            return float(np.median(d[1:, 0])), float(np.median(d[1:, 1])), float(d[0, 0])
        return run

    jobs = {
        "forward (original, ENABLE_ALL)": lambda: ref.run(None, feed()),
        "fed skeleton, opt off": lambda: fed.run(None, feed()),
        "fed + observed outputs": lambda: outs.run(names, feed()),
        "stats: min+max": stats_part("minmax"),
        "stats: count_nonzero": stats_part("zeros"),
        "stats: index multiply": stats_part("index"),
        "stats: TensorStats.update (all)": stats_part("update"),
        "collect auto, fed skeleton, every value binned": collect_run(True, (), False),
        "collect auto, fed skeleton, large tensors subsampled": collect_run(True, optimize=False),
        "collect auto, optimized graph, large tensors subsampled": collect_run(True),
        "collect minmax, fed skeleton": collect_run(False, optimize=False),
        "collect minmax, optimized graph": collect_run(False),
    }
    res: dict[str, list] = {k: [] for k in jobs}
    for _ in range(args.rounds):
        for k, fn in jobs.items():
            res[k].append(fn() if k.startswith("collect") else cpu_wall(fn, 3))
    base = float(np.median([c for c, _ in res["forward (original, ENABLE_ALL)"]]))
    print(f"\nResNet-50-sized, batch 1, {len(names)} observed tensors = {values / 1e6:.1f} M values/sample, "
          f"onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), medians of {args.rounds} "
          f"alternating rounds\n")
    print(f"(collect: collect_stats over {COLLECT_N} samples; per sample in the steady state, samples 2..N; "
          "its first sample, with the session build, apart)\n")
    print("| per sample | CPU ms | wall ms | CPU x forward | first sample CPU ms |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        c, w = (float(np.median([x[i] for x in v])) for i in (0, 1))
        first = f"{float(np.median([x[2] for x in v])):.0f}" if k.startswith("collect") else ""
        print(f"| {k} | {c:.1f} | {w:.1f} | {c / base:.2f}x | {first} |")
    print("\nquantize phases (s, wall, one run on", args.samples, "samples):",
          ", ".join(f"{k} {v:.2f}" for k, v in laps.items()))


if __name__ == "__main__":
    main()
