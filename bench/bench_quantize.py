"""onnxsq quantize vs onnxruntime.quantization.quantize_static, side by side, on the same samples.

    .venv-ort/bin/python bench/bench_quantize.py [--samples 32 128] [--rounds 3] [--models resnet50 ...]

For each model and sample count: seeded random calibration inputs (the same for every tool) are
written once; each tool then runs in a fresh subprocess (so peak memory is its own) and writes its
int8 model:

- ``ort``: ``quantize_static(model, out, reader)`` as users call it: its defaults (QDQ, MinMax, per
  tensor, int8 activations and weights), no ``quant_pre_process``.
- ``onnxsq <method>[-r<N>][-j<N>]``: ``onnxsq.quantize`` with that activation estimator (``auto`` is its
  default) and otherwise its defaults (BN folding, equalization, per-channel MSE weight shifts, bias
  correction, scale alignment, the per-layer report on 4 samples); ``-r0`` skips the report, ``-a0`` the
  scale alignment, ``-j2`` calibrates in 2 shard processes (``--jobs 2``). Calibration batch
  ``--batch-size`` (default 1, as the CLI).

Measured: wall time of the whole call (load → quantized model on disk) and its CPU time (user +
system of the tool's process and its children), peak RSS above the RSS before the call (VmHWM −
VmRSS; with ``-j`` the children's peaks are added), onnxsq's calibration time per sample (its
``calibrate`` phase) beside one optimized float forward (onnxruntime, all graph optimizations,
batch 1, 2 threads), output SQNR and top-1 agreement against the float model on the calibration
samples. ``--rounds N`` alternates the tools N times (fresh processes each) and prints medians, then
each tool's per-round ratios against ``ort``. The int8-against-float latency of the models is
``bench/bench_latency.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
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
import json, logging, resource, sys, time, numpy as np
from pathlib import Path
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def cpu():
    u, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime
tool, model, data, out, batch = sys.argv[1:6]
files = sorted(Path(data).glob("*.npy"))
import onnx, onnxruntime
laps = {}
if tool == "ort":
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    class Reader(CalibrationDataReader):
        def __init__(self): self.it = iter(files)
        def get_next(self):
            f = next(self.it, None)
            return None if f is None else {"input": np.load(f)}
    base = rss("VmRSS:"); t0 = time.perf_counter(); c0 = cpu()
    quantize_static(model, out, Reader())
else:
    from onnxsq.passes.quantize import QuantizeConfig, quantize
    from onnxsq.model_io import save_model
    class Laps(logging.Handler):
        def emit(self, record):
            if record.msg.startswith("quantize phases") and not laps:  # the pass's own (not align's re-check)
                laps.update(record.args[0] if isinstance(record.args, tuple) else record.args)
    lg = logging.getLogger("onnxsq.passes.quantize.ptq"); lg.setLevel(logging.DEBUG); lg.addHandler(Laps())
    method, *opts = tool.split("-")
    kw = {o[0]: int(o[1:]) for o in opts}
    cfg = QuantizeConfig(method=method, batch_size=int(batch), **({"report_samples": kw["r"]} if "r" in kw else {}),
                         **({"align_scales": bool(kw["a"])} if "a" in kw else {}))
    base = rss("VmRSS:"); t0 = time.perf_counter(); c0 = cpu()
    if "j" in kw:  # shard processes read the folder
        q, rep = quantize(model, data, config=cfg, jobs=kw["j"])
    else:
        q, rep = quantize(model, ({"input": np.load(f)} for f in files), config=cfg)
    save_model(q, out)
peak = rss("VmHWM:") - base
jobs = int(dict((o[0], o[1:]) for o in tool.split("-")[1:]).get("j", 0))  # shard processes run side by side:
kids = jobs * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # counted as N x the largest
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": (peak + kids) / 2**20, "cpu": cpu() - c0,
                  "calib_s": laps.get("calibrate", float("nan"))}))
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
    data = tmp / f"{name}_calib{samples}"
    data.mkdir()
    rng = np.random.default_rng(0)
    xs = []
    for i in range(samples):
        x = rng.standard_normal((1, *shape)).astype(np.float32)
        np.save(data / f"{i:04d}.npy", x)
        xs.append(x)
    ref = _outputs(str(path), xs)
    f_lat = _latency(str(path), xs[0], repeats)
    rows = [[name, samples, "float forward", "", "", "", f"{f_lat:.2f}", "", ""]]
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
            runs[tool].append([m["seconds"], m["peak_mb"], sqnr, top1, m["calib_s"] / samples * 1000, m["cpu"]])
            print(name, samples, tool, " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                                  for v in runs[tool][-1]), file=sys.stderr, flush=True)
    _ratios(f"{name}, {samples} samples", runs)
    for tool, got in runs.items():
        ok = [r for r in got if len(r) == 6]
        if not ok:
            rows.append([name, samples, tool, got[-1][0]])
            continue
        med = [float(np.median([r[i] for r in ok])) for i in range(6)]
        calib = "" if np.isnan(med[4]) else f"{med[4]:.1f} ({med[4] / f_lat:.2f}x)"
        rows.append([name, samples, tool, f"{med[0]:.2f}", f"{med[5]:.2f}", f"{med[1]:.0f}", calib,
                     f"{med[2]:.2f}", f"{med[3]:.3f}"])
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
    ap.add_argument("--samples", type=int, nargs="*", default=[32, 128])
    ap.add_argument("--models", nargs="*", default=["resnet50"], help=f"resnet50 and/or {', '.join(SAMPLES)}")
    ap.add_argument("--tools", nargs="*", default=["ort", "auto", "minmax"])
    ap.add_argument("--repeats", type=int, default=20, help="float forward runs timed")
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
            for n in args.samples:
                rows += bench_model(name, model, shape, n, args.tools, args.repeats, Path(tmp), args.batch_size,
                                    args.rounds)
    head = ["model", "samples", "tool", "quantize s", "CPU s", "peak MB", "calib ms/sample (x forward)",
            "out SQNR dB", "top-1 agree"]
    print(f"\nonnxsq batch {args.batch_size}, quantize_static one sample at a time; medians of {args.rounds} "
          f"alternating round(s); CPU, {os.cpu_count()} cores, onnxruntime {__import__('onnxruntime').__version__}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(map(str, r + [""] * (len(head) - len(r)))) + " |")
    if RATIOS:
        print("\nPer-round ratios against quantize_static (targets: >= 2.5x faster, <= 0.6x peak memory):")
        for line in RATIOS:
            print("- " + line)


if __name__ == "__main__":
    main()
