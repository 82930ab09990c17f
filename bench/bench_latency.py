"""int8 against float latency in onnxruntime (CPU, batch 1) for every zoo model: onnxsq's power-of-two
QDQ model beside onnxruntime's own QDQ model of it (``quantize_static`` as users call it):

    .venv-ort/bin/python bench/bench_latency.py [--models NAME ...] [--calib 8] [--rounds 5] [--threads 2]

Each model is quantized by ``onnxsq.quantize`` (its defaults, no report; ``--carrier uint8``: signed activations
at zero point 128, one type through every layer, which onnxruntime's fusions need; ``--ort-kernels``: Sigmoid,
LeakyRelu and Mul of two activations as its QLinearSigmoid/QLinearLeakyRelu/QLinearMul) and by ``quantize_static(model,
out, reader)`` (its defaults: QDQ, MinMax, per tensor, int8), both on the same ``--calib`` samples (the
zoo's photos, or seeded feeds for models that take no image). The three models then run in
onnxruntime with every graph optimization (its QDQ fusions turn DequantizeLinear → op → QuantizeLinear
into integer kernels), batch 1, ``--threads`` intra-op threads, on the first sample: ``--rounds``
rounds alternate float / onnxsq / ort (each a timed block of runs, ~``--budget`` s), and the table shows
medians of the per-round means and the speed-up against float. ``--cpu-time --threads 1`` times
single-core compute instead (CPU time per run), which a busy shared machine disturbs far less than
wall time.

To say *why* a model is slow, the optimized graph each session runs is counted: integer kernels
(QLinear*, *Integer, com.microsoft QLinear*/QGemm...) against float compute ops left (Conv,
ConvTranspose, Gemm, MatMul) and Quantize/DequantizeLinear nodes left (each a float island's border:
an int8 → float → int8 round trip onnxruntime could not fuse).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from zoo.cli_args import samples  # noqa: E402

FLOAT_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv"}


def quantize_onnxsq(m, calib: list[dict], out: Path, integer_only: bool = False, carrier: str | None = None,
                    ort_kernels: bool | None = None) -> str:
    from onnxsq.model_io import save_model
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    extra = {k: v for k, v in (("carrier", carrier), ("ort_kernels", ort_kernels)) if v is not None}
    q, _ = quantize(m.path, iter(calib), config=QuantizeConfig(report_samples=0, integer_only=integer_only, **extra))
    save_model(q, out)
    return "ok"


def quantize_ort(m, calib: list[dict], out: Path) -> str:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(str(m.path), str(out), Reader())
    return "ok"


def session(path: Path, threads: int, optimized: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def census(optimized: Path) -> tuple[int, int, int]:
    """(integer kernels, float compute ops, Q/DQ nodes) in the graph onnxruntime runs."""
    g = onnx.load(str(optimized), load_external_data=False).graph
    ops = [n.op_type for n in g.node]
    integer = sum(1 for o in ops if o.startswith("QLinear") or o.endswith("Integer") or o in ("QGemm", "QAttention"))
    return integer, sum(1 for o in ops if o in FLOAT_COMPUTE), sum(1 for o in ops if o in ("QuantizeLinear",
                                                                                         "DequantizeLinear"))


def time_block(sess, feed: dict, budget: float, clock=time.perf_counter) -> float:
    """Mean ms per run over a block of about ``budget`` seconds (at least 3 runs), by ``clock``."""
    t0 = time.perf_counter()
    sess.run(None, feed)
    one = max(time.perf_counter() - t0, 1e-5)
    n = max(3, int(budget / one))
    t0 = clock()
    for _ in range(n):
        sess.run(None, feed)
    return (clock() - t0) / n * 1000


def bench_model(m, images: list[Path], args, tmp: Path) -> list[str]:
    calib = samples(m, images, args.calib)
    paths = {"float": m.path, "onnxsq": tmp / f"{m.name}.onnxsq.onnx", "ort": tmp / f"{m.name}.ort.onnx"}
    status = {"float": "ok"}
    onnxsq = functools.partial(quantize_onnxsq, integer_only=args.integer_only, carrier=args.carrier,
                               ort_kernels=args.ort_kernels)
    for tool, fn in (("onnxsq", onnxsq), ("ort", quantize_ort)):
        try:
            status[tool] = fn(m, calib, paths[tool])
        except Exception as exc:  # noqa: BLE001 - a tool refusing a model is a table entry
            status[tool] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:50] if str(exc) else ''}"
    feed = calib[0]
    sessions, counts = {}, {}
    for tool, path in paths.items():
        if status[tool] != "ok":
            continue
        opt = tmp / f"{m.name}.{tool}.opt.onnx"
        try:
            sessions[tool] = session(path, args.threads, opt)
            sessions[tool].run(None, feed)
            counts[tool] = census(opt)
        except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot run is a table entry
            status[tool] = f"does not run: {str(exc).splitlines()[0][:50]}"
            sessions.pop(tool, None)
    times: dict[str, list[float]] = {t: [] for t in sessions}
    for _ in range(args.rounds):
        for tool, sess in sessions.items():
            times[tool].append(time_block(sess, feed, args.budget,
                                          time.process_time if args.cpu_time else time.perf_counter))
    med = {t: statistics.median(v) for t, v in times.items()}
    f = med.get("float")

    def cell(tool: str) -> str:
        if tool not in med:
            return status[tool]
        return f"{med[tool]:.2f}" + (f" ({f / med[tool]:.2f}x)" if f and tool != "float" else "")

    def mix(tool: str) -> str:
        return "/".join(map(str, counts[tool])) if tool in counts else ""

    ratio = f"{med['ort'] / med['onnxsq']:.2f}x" if "ort" in med and "onnxsq" in med else ""
    return [m.name, cell("float"), cell("onnxsq"), cell("ort"), ratio, mix("onnxsq"), mix("ort")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="zoo model names (default: all)")
    ap.add_argument("--calib", type=int, default=8, help="calibration samples per model")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--integer-only", action="store_true", help="onnxsq's models with quantize --integer-only")
    ap.add_argument("--carrier", choices=("uint8", "native"),
                    help="onnxsq's signed activations: uint8 at zero point 128, or int8 (default: QuantizeConfig's)")
    ap.add_argument("--ort-kernels", action="store_true", default=None,
                    help="onnxsq's Sigmoid/LeakyRelu/Mul of two activations as onnxruntime's integer kernels run them")
    ap.add_argument("--cpu-time", action="store_true",
                    help="CPU time per run instead of wall time (with --threads 1: single-core compute, which a busy "
                         "shared machine disturbs far less)")
    args = ap.parse_args(argv)
    import onnxruntime

    models = zoo.ensure(check=False)
    if args.models:
        models = [m for m in models if m.name in set(args.models)]
    images = zoo.images()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsq-latency-") as tmp:
        for m in models:
            t0 = time.perf_counter()
            rows.append(bench_model(m, images, args, Path(tmp)))
            print(f"# {m.name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    head = ["model", "float ms", "onnxsq int8 ms (x float)", "ORT QDQ ms (x float)", "onnxsq vs ORT",
            "onnxsq int/float/QDQ ops", "ORT int/float/QDQ ops"]
    print(f"\nbatch 1, onnxruntime {onnxruntime.__version__} CPU, all graph optimizations, {args.threads} "
          f"threads, {'CPU' if args.cpu_time else 'wall'} ms per run; medians of {args.rounds} alternating rounds; "
          "ops: integer kernels / float Conv-Gemm-MatMul left / Q-DQ nodes left in the graph onnxruntime runs\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
