"""Every onnxsq command on every model of the real-model zoo, and quantization fidelity against
onnxruntime's ``quantize_static`` at its best, in one run:

    .venv-ort/bin/python bench/zoo.py [--models NAME ...] [--calib 9] [--eval 5] [--no-ort] [--json OUT]

Per model: ops (node count, op types), parameters; the status (ok, or the exit code and its one line)
and time of ``optimize`` (with its self-check), ``verify``, ``threshold`` (defaults and ``--global
0.8``), ``quantize`` and ``inspect``, each run as a user runs it (the CLI, default options); BN and
affine ops folded; conv/gemm sparsity after ``threshold``. Fidelity: calibration on the first
``--calib`` photos scikit-image ships (whole, stretched to the model's input size, its own
preprocessing; text detectors get the photos with seeded text drawn on them, ``zoo.text_overlay``),
judged on two seeded random crops of each of the next ``--eval`` photos: output
SQNR against the float model (all outputs and samples pooled) and top-1 agreement (argmax over the last
axis of the first output, at every position). The peer, on the same calibration and evaluation data:
``quantize_static`` (QDQ, MinMax) with and without ``quant_pre_process``, per-tensor and per-channel
weights; the best of the four is shown. Models with constant weights (onnx's light zoo) and models
that take no image get no fidelity numbers (their outputs are constant, or the data is random).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from zoo.cli_args import bench_images, crops, preprocess_args, samples, takes_images  # noqa: E402
from zoo.measure import fidelity, ort_best  # noqa: E402

COMMANDS = ("optimize", "verify", "threshold", "threshold-global", "quantize", "inspect")


def cli(*argv) -> tuple[int, str, float]:
    """Run the onnxsq CLI in-process: (exit code, last stderr line, seconds)."""
    from onnxsq.cli import main as cli_main
    from onnxsq.cli.render import reset_consoles

    reset_consoles()
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main.run([str(a) for a in argv])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, (lines[-1] if lines else ""), time.perf_counter() - t0


def run_commands(m, work: Path, calib_dir: Path) -> dict:
    """Each command once, as a user calls it; statuses, times and what the reports say."""
    row: dict = {}
    opt, q = work / f"{m.name}.opt.onnx", work / f"{m.name}.q.onnx"
    steps = {
        "optimize": ["optimize", m.path, "-o", opt, "--report", work / "opt.json", "-q"],
        "verify": ["verify", m.path, opt, "-q"],
        "threshold": ["threshold", m.path, "-o", work / "thr.onnx", "--report", work / "thr.json", "-q"],
        "threshold-global": ["threshold", m.path, "--global", "0.8", "-o", work / "thrg.onnx", "-q"],
        "quantize": ["quantize", m.path, "--calib", calib_dir, *(preprocess_args(m) if takes_images(m) else []),
                     "-o", q, "--report", work / "q.json", "-q"],
        "inspect": ["inspect", q, "-q"],
    }
    for name in COMMANDS:
        code, line, secs = cli(*steps[name])
        row[name] = {"code": code, "line": line if code else "", "seconds": round(secs, 2)}
    row.update(_report_facts(work))
    return row


def _report_facts(work: Path) -> dict:
    facts: dict = {}
    if (work / "opt.json").exists():
        s = json.loads((work / "opt.json").read_text())["summary"]
        facts.update(bn=f"{s.get('folded', 0) + s.get('replaced', 0)}/{s.get('bn_nodes', 0)}",
                     affine=f"{s.get('affine_folded', 0)}/{s.get('affine_nodes', 0)}",
                     constants=s.get("constants_folded", 0))
    if (work / "thr.json").exists():
        s = json.loads((work / "thr.json").read_text())["summary"]
        facts["sparsity"] = _sparsity(s)
    if (work / "q.json").exists():
        facts["q_summary"] = json.loads((work / "q.json").read_text())["summary"]
    return facts


def _sparsity(summary: dict) -> str:
    """Conv weight zeros after ``threshold`` (its summary says "0.00% -> 18.12% zero (...)")."""
    text = str(summary.get("conv weights (Conv/ConvTranspose)", summary.get("thresholded weights", "")))
    after = text.split("->")[-1].split("zero")[0].strip()
    return after or "?"


def bench_model(m, images: list[Path], args, root: Path) -> dict:
    work = root / m.name
    work.mkdir()
    images = bench_images(m, images[:args.calib + args.eval], work)  # text detectors: photos with text drawn on
    calib = samples(m, images, args.calib)
    calib_dir = work / "calib"
    calib_dir.mkdir()
    if takes_images(m):
        for p in images[:args.calib]:
            (calib_dir / p.name).symlink_to(p)
    else:
        for i, feed in enumerate(calib):
            np.savez(calib_dir / f"s{i}.npz", **feed)
    row = {"name": m.name, "nodes": m.info["nodes"], "op_types": len(m.ops), "params": m.params}
    row.update(run_commands(m, work, calib_dir))
    fid = takes_images(m) and m.trained and row["quantize"]["code"] == 0
    if fid:
        feeds = crops(m, images[args.calib:args.calib + args.eval], per_image=2)
        row["sqnr"], row["top1"] = fidelity(m.path, work / f"{m.name}.q.onnx", feeds)
        if not args.no_ort:
            row["ort_sqnr"], row["ort_top1"], row["ort_variant"] = ort_best(m, calib, feeds, work)
    return row


def _status(cell: dict) -> str:
    return f"ok {cell['seconds']:.1f}s" if cell["code"] == 0 else f"exit {cell['code']}"


def _num(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def print_table(rows: list[dict]) -> None:
    head = ["model", "nodes", "params", *COMMANDS, "BN", "affine", "sparsity", "SQNR dB", "ORT best dB",
            "top-1 %", "ORT top-1 %"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["name"], str(r["nodes"]), f"{r['params'] / 1e6:.2f} M", *(_status(r[c]) for c in COMMANDS),
                 r.get("bn", "?"), r.get("affine", "?"), r.get("sparsity", "?"), _num(r.get("sqnr"), ".1f"),
                 _num(r.get("ort_sqnr"), ".1f"), _num(r.get("top1"), ".1f"), _num(r.get("ort_top1"), ".1f")]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for c in COMMANDS:
            if r[c]["code"]:
                print(f"- {r['name']} {c}: {r[c]['line']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="zoo model names (default: all)")
    ap.add_argument("--calib", type=int, default=9, help="calibration photos")
    ap.add_argument("--eval", type=int, default=5, help="evaluation photos (two crops each)")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime's quantize_static")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    models = zoo.ensure(check=False)
    if args.models:
        models = [m for m in models if m.name in set(args.models)]
    images = zoo.images()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsq-zoo-") as tmp:
        for m in models:
            t0 = time.perf_counter()
            rows.append(bench_model(m, images, args, Path(tmp)))
            print(f"# {m.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
