"""BatchNorm folding on a ResNet-50-sized model: onnxsq vs onnxoptimizer vs onnxruntime's basic optimizer.

Run with the environment that has all three (onnxoptimizer is in .venv-ort only):

    .venv-ort/bin/python bench/bench_optimize.py [--repeats 5]

Each tool runs file → file (load, fold, save) in a fresh subprocess, so the times include reading
and writing the model and the memory figures are the child's peak resident set size, also shown net of
what the process held after its imports (VmHWM from /proc/self/status). Outputs are compared in onnxruntime
(graph optimizations off) against the original on the same seeded inputs: the relative error is
``max |y - y_ref| / max |y_ref|`` over all outputs and samples.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = {
    "onnxsq": "onnxsq fold_batchnorm (no self-check)",
    "onnxsq-verify": "onnxsq optimize (with its self-check)",
    "onnxoptimizer": "onnxoptimizer fuse_bn_into_conv",
    "ort-basic": "onnxruntime ORT_ENABLE_BASIC → file",
}


def _rss_mib() -> float:
    """This process's peak resident set size. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the parent across fork+exec, which would count the benchmark driver's own memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def child(tool: str, src: str, dst: str) -> dict:
    """Runs in the subprocess: imports, then the timed file → file transformation."""
    if tool.startswith("onnxsq"):
        from onnxsq.model_io import save_model
        from onnxsq.passes.fold_batchnorm import fold_batchnorm
        if tool == "onnxsq-verify":
            import onnxruntime  # noqa: F401 - imported up front so the timing covers only the work
    elif tool == "onnxoptimizer":
        import onnx
        import onnxoptimizer
    else:
        import onnxruntime as ort
    base = _rss_mib()
    t0 = time.perf_counter()
    if tool.startswith("onnxsq"):
        model, _ = fold_batchnorm(src, verify=tool == "onnxsq-verify")
        save_model(model, dst)
    elif tool == "onnxoptimizer":
        model = onnxoptimizer.optimize(onnx.load(src), ["fuse_bn_into_conv"])
        onnx.save(model, dst)
    else:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = dst
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return {"seconds": time.perf_counter() - t0, "peak_mib": _rss_mib(), "base_mib": base}


def available(tool: str) -> str | None:
    import importlib.util

    need = {"onnxoptimizer": "onnxoptimizer"}.get(tool, "onnxruntime")
    return None if importlib.util.find_spec(need) else f"{need} is not installed in this environment"


def measure(tools: list[str], src: Path, tmp: Path, repeats: int) -> dict[str, dict]:
    """Round-robin over the tools (so a busy machine slows them alike); median time, max memory."""
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    failed: dict[str, dict] = {}
    for _ in range(repeats):
        for tool in tools:
            if tool in failed:
                continue
            proc = subprocess.run([sys.executable, __file__, "--child", tool, str(src), str(tmp / f"{tool}.onnx")],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                failed[tool] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            runs[tool].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = dict(failed)
    for tool, rs in runs.items():
        if tool not in failed:
            out[tool] = {"seconds": statistics.median(r["seconds"] for r in rs),
                         "peak_mib": max(r["peak_mib"] for r in rs),
                         "net_mib": max(r["peak_mib"] - r["base_mib"] for r in rs)}
    return out


def errors(src: Path, dst: Path, samples: int = 2) -> tuple[int, float, float]:
    """(BN nodes left, max relative error, max absolute error) of ``dst`` against ``src``."""
    import numpy as np
    import onnx

    from onnxsq.runtime import make_session
    from onnxsq.verify import random_feeds

    bn_left = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(dst)).graph.node)
    ref_model = onnx.load(str(src))
    ref, got = make_session(str(src)), make_session(str(dst))
    max_abs = scale = 0.0
    for i in range(samples):
        feeds = random_feeds(ref_model, seed=i)
        for a, b in zip(ref.run(None, feeds), got.run(None, feeds)):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            max_abs = max(max_abs, float(np.abs(a64 - b64).max()))
            scale = max(scale, float(np.abs(a64).max()))
    return bn_left, max_abs / scale, max_abs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh subprocesses per tool, round-robin (median time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import onnx
    import onnxruntime
    from resnet50 import build_resnet50, parameter_count
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet50.onnx"
        model = build_resnet50(seed=args.seed)
        onnx.save(model, str(src))
        bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
        title = (f"BatchNorm folding, ResNet-50-sized model: {parameter_count(model) / 1e6:.1f} M parameters, "
                 f"{bn} BN, {src.stat().st_size / 2**20:.0f} MiB (onnx {onnx.__version__}, onnxruntime "
                 f"{onnxruntime.__version__}, median of {args.repeats} runs)")
        table = Table(title=title, title_justify="left")
        for col in ("tool", "wall time (s)", "peak RSS (MiB)", "peak − after imports (MiB)", "BN left",
                    "max rel error", "max abs error"):
            table.add_column(col, justify="left" if col == "tool" else "right")
        ready = [t for t in TOOLS if available(t) is None]
        results = measure(ready, src, Path(tmp), args.repeats)
        for tool, label in TOOLS.items():
            m = results.get(tool, {"error": available(tool)})
            if "error" in m:
                table.add_row(label, *["—"] * 5, str(m["error"])[:60])
                continue
            bn_left, rel, abs_ = errors(src, Path(tmp) / f"{tool}.onnx")
            table.add_row(label, f"{m['seconds']:.2f}", f"{m['peak_mib']:.0f}", f"{m['net_mib']:.0f}", str(bn_left),
                          f"{rel:.2e}", f"{abs_:.2e}")
        Console(width=160).print(table)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])))
    else:
        main()
