"""onnxsq quantize vs onnxruntime.quantization.quantize_static, side by side, on the same samples.

    .venv-ort/bin/python bench/bench_quantize.py [--samples 32] [--models resnet50 digits_cnn ...]

For each model: seeded random calibration inputs (the same for every tool) are written once; each
tool then runs in a fresh subprocess (so peak memory is its own) and writes its int8 model:

- ``ort``: ``quant_pre_process`` (its recommended pre-processing) then ``quantize_static`` — QDQ,
  MinMax, per-tensor, uint8 activations / int8 weights (its recommendation for x86 CPUs).
- ``onnxsq <method>``: ``onnxsq.quantize`` with that activation estimator and the default MSE weight
  shifts and bias correction (BN folding, calibration, per-layer report on 4 samples included), calibration batch
  ``--batch-size`` (default 1, as the CLI); ``minmax-r0`` skips the per-layer report (calibration alone).

Measured: wall time of the whole call (load → quantized model on disk) and its CPU time (user +
system, all threads: the work done, which a busy shared machine disturbs less than wall time), peak
RSS above the RSS before the call (VmHWM − VmRSS), output SQNR and top-1 agreement against the float
model on the calibration samples, and batch-1 inference latency (onnxruntime, graph optimizations on,
2 threads) of the int8 model against the float one. ``--rounds N`` alternates the tools N times (fresh
processes each) and prints medians, then each tool's per-round ratios against ``ort``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = {"digits_cnn": (1, 8, 8), "jacintonet_seg": (3, 64, 64), "small_cls_torch": (3, 32, 32)}

CHILD = r"""
import json, sys, time, numpy as np
from pathlib import Path
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def cpu():
    import resource
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
tool, model, data, out, batch = sys.argv[1:6]
files = sorted(Path(data).glob("*.npy"))
import onnx, onnxruntime
if tool == "ort":
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    class Reader(CalibrationDataReader):
        def __init__(self): self.it = iter(files)
        def get_next(self):
            f = next(self.it, None)
            return None if f is None else {"input": np.load(f)}
    base = rss("VmRSS:"); t0 = time.perf_counter(); c0 = cpu()
    pre = out + ".pre.onnx"
    quant_pre_process(model, pre, skip_symbolic_shape=True)  # sympy is not installed; CNNs need no symbolic shapes
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
else:
    from onnxsq.passes.quantize import QuantizeConfig, quantize
    from onnxsq.model_io import save_model
    method, _, rs = tool.partition("-r")
    cfg = QuantizeConfig(method=method, batch_size=int(batch), **({"report_samples": int(rs)} if rs else {}))
    feeds = ({"input": np.load(f)} for f in files)
    base = rss("VmRSS:"); t0 = time.perf_counter(); c0 = cpu()
    q, rep = quantize(model, feeds, config=cfg)
    save_model(q, out)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": (rss("VmHWM:") - base) / 2**20,
                  "cpu": cpu() - c0}))
"""


def _latency(path: str, x: np.ndarray, repeats: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    s.run(None, {"input": x})
    t0 = time.perf_counter()
    for _ in range(repeats):
        s.run(None, {"input": x})
    return (time.perf_counter() - t0) / repeats * 1000


def _outputs(path: str, xs: list[np.ndarray]) -> np.ndarray:
    from onnxsq.runtime import make_session

    s = make_session(path)
    return np.concatenate([s.run(None, {"input": x})[0] for x in xs])


def _fidelity(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    r, o = ref.astype(np.float64), out.astype(np.float64)
    sqnr = 10 * np.log10(np.sum(r * r) / max(np.sum((r - o) ** 2), 1e-30))
    return float(sqnr), float(np.mean(np.argmax(r, 1) == np.argmax(o, 1)))


def bench_model(name: str, model: onnx.ModelProto, shape: tuple[int, ...], samples: int, tools: list[str],
                repeats: int, tmp: Path, batch: int = 1, rounds: int = 1) -> list[list]:
    path = tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    data = tmp / f"{name}_calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    xs = []
    for i in range(samples):
        x = rng.standard_normal((1, *shape)).astype(np.float32)
        np.save(data / f"{i:04d}.npy", x)
        xs.append(x)
    ref = _outputs(str(path), xs)
    f_lat = _latency(str(path), xs[0], repeats)
    rows = [[name, "float", "", "", "", "", "", f"{f_lat:.2f}"]]
    runs: dict[str, list[list]] = {tool: [] for tool in tools}
    for _ in range(rounds):  # tools alternate, so machine load drifts hit all of them alike
        for tool in tools:
            out = tmp / f"{name}.{tool}.onnx"
            proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(path), str(data), str(out), str(batch)],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                runs[tool].append(["failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:60]])
                continue
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            sqnr, top1 = _fidelity(ref, _outputs(str(out), xs))
            lat = _latency(str(out), xs[0], repeats)
            runs[tool].append([m["seconds"], m["peak_mb"], sqnr, top1, lat, m["cpu"]])
            print(name, tool, " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in runs[tool][-1]),
                  file=sys.stderr, flush=True)
    _ratios(name, runs)
    for tool, got in runs.items():
        ok = [r for r in got if len(r) == 6]
        if not ok:
            rows.append([name, tool, got[-1][0]])
            continue
        med = [float(np.median([r[i] for r in ok])) for i in range(6)]
        rows.append([name, tool, f"{med[0]:.2f}", f"{med[5]:.2f}", f"{med[1]:.0f}", f"{med[2]:.2f}", f"{med[3]:.3f}",
                     f"{med[4]:.2f}"])
    return rows


RATIOS: list[str] = []


def _ratios(name: str, runs: dict[str, list[list]]) -> None:
    """Against ``ort`` in the same round (the machine's load drifts between rounds): speed-up and
    memory ratio per round, median and range."""
    base = runs.get("ort", [])
    for tool, got in runs.items():
        if tool == "ort":
            continue
        pairs = [(b, r) for b, r in zip(base, got) if len(b) == 6 and len(r) == 6]
        if not pairs:
            continue
        speed = sorted(b[0] / r[0] for b, r in pairs)
        work = sorted(b[5] / r[5] for b, r in pairs)
        mem = sorted(r[1] / b[1] for b, r in pairs)
        RATIOS.append(f"{name} {tool}: {float(np.median(speed)):.2f}x faster than quantize_static (rounds: "
                      f"{speed[0]:.2f}-{speed[-1]:.2f}; CPU time {float(np.median(work)):.2f}x, "
                      f"{work[0]:.2f}-{work[-1]:.2f}), peak memory {float(np.median(mem)):.2f}x "
                      f"({mem[0]:.2f}-{mem[-1]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--models", nargs="*", default=["resnet50", *SAMPLES])
    ap.add_argument("--tools", nargs="*", default=["ort", "minmax", "minmax-r0", "mse", "percentile", "ema"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1, help="onnxsq calibration batch (its default: 1)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per tool; the table shows medians")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "resnet50":
                from resnet50 import build_resnet50

                model, shape = build_resnet50(seed=0, opset=13), (3, 224, 224)
            else:
                p = REPO / "sample_models" / f"{name}.onnx"
                if not p.exists():
                    print(f"skipping {name}: {p} missing", file=sys.stderr)
                    continue
                model, shape = onnx.load(str(p)), SAMPLES[name]
            rows += bench_model(name, model, shape, args.samples, args.tools, args.repeats, Path(tmp),
                                args.batch_size, args.rounds)
    head = ["model", "tool", "quantize s", "CPU s", "peak MB", "out SQNR dB", "top-1 agree", "latency ms"]
    print(f"\n{args.samples} calibration samples (onnxsq batch {args.batch_size}, quantize_static one at a time), "
          f"medians of {args.rounds} alternating round(s), "
          f"CPU, onnxruntime "
          f"{__import__('onnxruntime').__version__}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(map(str, r + [""] * (len(head) - len(r)))) + " |")
    if RATIOS:
        print("\nPer-round ratios against quantize_static (targets: >= 2x faster, <= 0.5x peak memory):")
        for line in RATIOS:
            print("- " + line)


if __name__ == "__main__":
    main()
