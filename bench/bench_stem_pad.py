"""The input-channel pad of quantize (:mod:`onnxsq.passes.quantize.stem_pad`) measured: float / onnxsq without
the pad / onnxsq with it, in onnxruntime (CPU, batch 1, all graph optimizations), same run:

    .venv-ort/bin/python bench/bench_stem_pad.py [--models NAME ...] [--rounds 20] [--runs 20] [--threads 1]

Each model is quantized twice by ``onnxsq.quantize`` on the same ``--calib`` samples (bench_latency's), once
as it is and once with ``pad_input_channels`` replaced by a no-op (everything else the same), and the two
quantized models' outputs are checked equal on those samples (the pad keeps the integers). Then ``--rounds``
short rounds alternate float / before / after (each ``--runs`` runs, CPU time per run with ``--threads 1``):
the table shows the median and the 10th percentile of the round means (the p10 is what a shared machine
disturbs least) and the speed-up against float. Default models: the zoo's nets whose stem the pad takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

import bench_latency as lat  # noqa: E402

import zoo  # noqa: E402
from zoo.cli_args import samples  # noqa: E402

DEFAULT = ("torch_resnet_basic", "torch_crnn_unrolled_lstm", "light_vgg19")


def _quantized(m, calib: list[dict], tmp: Path) -> dict[str, Path]:
    import onnxsq.passes.quantize.insert as insert

    paths = {"float": m.path, "before": tmp / f"{m.name}.before.onnx", "after": tmp / f"{m.name}.after.onnx"}
    pad = insert.pad_input_channels
    try:
        insert.pad_input_channels = lambda graph, names: []
        lat.quantize_onnxsq(m, calib, paths["before"])
    finally:
        insert.pad_input_channels = pad
    lat.quantize_onnxsq(m, calib, paths["after"])
    return paths


def bench_model(m, args, tmp: Path) -> list[str]:
    calib = samples(m, zoo.images(), args.calib)
    paths = _quantized(m, calib, tmp)
    sessions = {k: lat.session(p, args.threads, tmp / f"{m.name}.{k}.opt.onnx") for k, p in paths.items()}
    before, after = sessions["before"], sessions["after"]
    same = all(all(np.array_equal(a, b) for a, b in zip(before.run(None, f), after.run(None, f))) for f in calib)
    feed = calib[0]
    clock = time.process_time if args.threads == 1 else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(args.rounds):
        for k, s in sessions.items():
            t0 = clock()
            for _ in range(args.runs):
                s.run(None, feed)
            times[k].append((clock() - t0) / args.runs * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    p10 = {k: float(np.percentile(v, 10)) for k, v in times.items()}

    def cell(k: str) -> str:
        if k == "float":
            return f"{med[k]:.3f} / {p10[k]:.3f}"
        return f"{med[k]:.3f} ({med['float'] / med[k]:.2f}x) / {p10[k]:.3f} ({p10['float'] / p10[k]:.2f}x)"

    ops = "/".join(map(str, lat.census(tmp / f"{m.name}.after.opt.onnx")))
    return [m.name, cell("float"), cell("before"), cell("after"), f"{med['before'] / med['after']:.2f}x",
            "yes" if same else "NO", ops]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(DEFAULT), help="zoo model names")
    ap.add_argument("--calib", type=int, default=8, help="calibration samples per model")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20, help="runs per round")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1: CPU time)")
    args = ap.parse_args(argv)
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsq-stem-pad-") as tmp:
        for name in args.models:
            rows.append(bench_model(zoo.get(name), args, Path(tmp)))
            print(f"# {name} done", file=sys.stderr, flush=True)
    head = ["model", "float ms (median / p10)", "before: no pad", "after: stem pad", "after vs before (median)",
            "outputs equal", "after int/float/QDQ ops"]
    unit = "CPU" if args.threads == 1 else "wall"
    print(f"\nbatch 1, onnxruntime {onnxruntime.__version__} CPU, {args.threads} thread(s), {unit} ms per run; "
          f"{args.rounds} alternating rounds of {args.runs} runs\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
