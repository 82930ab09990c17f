"""Power-of-two quantization fidelity on the trained image models of the real-model zoo, onnxsq's
estimator choices side by side with onnxruntime's ``quantize_static`` at its best, same data, same run:

    .venv-ort/bin/python bench/fidelity.py [--models NAME ...] [--calib 9] [--eval 17] [--crops 4] [--variants ...]

Calibration: the first ``--calib`` photos scikit-image ships (whole, stretched to the model's input size,
its own preprocessing; a text detector's photos have seeded text drawn on them, ``zoo.text_overlay``);
evaluation: ``--crops`` (4) seeded crops of each of the next ``--eval`` (17) photos: 68 crops (10, the
issue's first protocol, ``--eval 5 --crops 2``, left classifier outputs to a few crops near a decision
flip: one model's SQNR moved by 5 dB between configurations equal on 68). Measured:
output SQNR against the float model (every output, samples pooled) and top-1 agreement. Variants are
``onnxsq.quantize`` configurations (``name=key:value,key:value``; the default set compares activation
estimators and per-tensor/per-channel weights); ORT best: with/without ``quant_pre_process`` ×
per-tensor/per-channel weights (QDQ, MinMax), the best of the four. ``--median``: also each variant's median
of the per-crop output SQNRs (the issue's protocol) and onnxruntime's best median over its four. Prints one
table, a row per model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from zoo.cli_args import bench_images, crops, samples, takes_images  # noqa: E402
from zoo.measure import fidelity, median_db, ort_best  # noqa: E402

DEFAULT_VARIANTS = (
    "default=",
    "mse=method:mse",
    "per-channel=per_channel:true",
    "pc+mse=per_channel:true,method:mse",
)


def parse_variant(text: str) -> tuple[str, dict]:
    """``name=key:value,...`` → (name, QuantizeConfig overrides); values: true/false, ints, floats, text."""
    name, _, body = text.partition("=")
    out: dict = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition(":")
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    pass
        out[key] = value
    return name, out


def run_variant(m, calib: list[dict], feeds: list[dict], overrides: dict, out: Path
                ) -> tuple[float, float, float, float]:
    """(SQNR, top-1, seconds, median per-sample SQNR) of onnxsq.quantize with ``overrides`` on ``m``."""
    from onnxsq.model_io import save_model
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    overrides = dict(overrides)
    # pre_equalize:true runs the standalone equalize pass first (exact: same float model); equalize:false
    # is QuantizeConfig's own step
    pre = overrides.pop("pre_equalize", False)
    t0 = time.perf_counter()
    src = m.path
    if pre:
        from onnxsq.passes.equalize import equalize
        from onnxsq.passes.fold_batchnorm import fold_batchnorm

        src = out.with_suffix(".eq.onnx")  # folded first, as quantize does: BN no longer splits the pairs
        save_model(equalize(fold_batchnorm(m.path)[0])[0], src)
    # the report's samples as the CLI's default (scale alignment's whole-model check runs on them); GPTQ
    # measures on them too, so `max` and weight_rounding:gptq take 8
    gptq = overrides.get("weight_rounding") == "gptq" or overrides.get("effort") == "max"
    cfg = QuantizeConfig(**{**({"report_samples": 8} if gptq else {}), **overrides})
    q, report = quantize(src, iter(calib), config=cfg)
    seconds = time.perf_counter() - t0
    for key in ("finetune", "calib_crops_check", "scale_alignment_check"):  # what each check saw, for the log
        if key in report.summary:
            print(f"# {m.name} {out.stem}: {key} {report.summary[key]}", file=sys.stderr)
    save_model(q, out)
    per: list[float] = []
    return (*fidelity(m.path, out, feeds, per), seconds, median_db(per))


def run_quark(python: str, m, calib: list[dict], feeds: list[dict], config: str, out: Path
              ) -> tuple[float, float, float]:
    """(SQNR, top-1, seconds) of AMD Quark's ``config`` on ``m`` (bench/quark_quantize.py in ``python``'s
    environment; NaN where it fails, with its last line on stderr)."""
    import subprocess

    import numpy as np

    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **{f"{i}/{k}": v for i, feed in enumerate(calib) for k, v in feed.items()})
    proc = subprocess.run([python, str(REPO / "bench" / "quark_quantize.py"), str(m.path), str(npz), str(out),
                           "--config", config], capture_output=True, text=True, cwd=out.parent)  # Quark writes files
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"# {m.name}: Quark {config} failed: {tail}", file=sys.stderr)
        return float("nan"), float("nan"), float("nan")
    return (*fidelity(m.path, out, feeds), float(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*",
                    help="zoo model names (default: every trained image model; named untrained ones too)")
    ap.add_argument("--calib", type=int, default=9)
    ap.add_argument("--eval", type=int, default=17)
    ap.add_argument("--crops", type=int, default=4, help="seeded crops per evaluation photo")
    ap.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--median", action="store_true", help="also each variant's median per-sample output SQNR (the "
                    "issue's protocol) and onnxruntime's best median over its four variants")
    ap.add_argument("--quark-python", help="python of an AMD Quark environment (bench/quark_quantize.py): adds "
                    "its power-of-two XINT8 and XINT8_ADAROUND columns")
    ap.add_argument("--quark-configs", nargs="*", default=["XINT8", "XINT8_ADAROUND"],
                    help="which of Quark's configurations (AdaRound is slow: tens of minutes per model here)")
    args = ap.parse_args(argv)
    quark = tuple(args.quark_configs) if args.quark_python else ()
    named = set(args.models or ())  # an untrained model is measured when named (its structure, not its weights)
    models = [m for m in zoo.ensure(check=False) if takes_images(m) and (m.trained or m.name in named)]
    if args.models:
        models = [m for m in models if m.name in set(args.models)]
    images = zoo.images()
    variants = [parse_variant(v) for v in args.variants]
    head = ["model", *(f"{n} dB" for n, _ in variants), "ORT best dB", "ORT variant",
            *(f"Quark {c} dB" for c in quark), *(f"{n} top-1" for n, _ in variants), "ORT top-1"]
    if args.median:
        head += [*(f"{n} median dB" for n, _ in variants), "ORT best median dB"]
    print("| " + " | ".join(head) + " |")  # rows as they come: a long run keeps what it measured
    print("|" + "---|" * len(head), flush=True)
    with tempfile.TemporaryDirectory(prefix="onnxsq-fidelity-") as tmp:
        for m in models:
            imgs = bench_images(m, images[:args.calib + args.eval], Path(tmp) / m.name)
            calib = samples(m, imgs, args.calib)
            feeds = crops(m, imgs[args.calib:args.calib + args.eval], per_image=args.crops)
            res = [run_variant(m, calib, feeds, o, Path(tmp) / f"{m.name}.{n}.onnx") for n, o in variants]
            medians: dict[str, float] = {}
            ort = (float("nan"), float("nan"), "skipped") if args.no_ort else ort_best(m, calib, feeds, Path(tmp),
                                                                                        medians)
            qk = [run_quark(args.quark_python, m, calib, feeds, c, Path(tmp) / f"{m.name}.quark.{c}.onnx")
                  for c in quark]
            row = [m.name, *(f"{r[0]:.1f}" for r in res), f"{ort[0]:.1f}", ort[2],
                   *(f"{r[0]:.1f}" for r in qk), *(f"{r[1]:.1f}" for r in res), f"{ort[1]:.1f}"]
            if args.median:
                best_median = max((v for v in medians.values() if v == v), default=float("nan"))
                row += [*(f"{r[3]:.1f}" for r in res), f"{best_median:.1f}"]
            print("| " + " | ".join(row) + " |", flush=True)
            print(f"# {m.name}: " + ", ".join(f"{n} {r[2]:.1f}s" for (n, _), r in zip(variants, res))
                  + "".join(f", Quark {c} {r[2]:.1f}s" for c, r in zip(quark, qk)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
