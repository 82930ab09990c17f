"""onnxsq simulate against onnxruntime on the real-model zoo: bit equality and speed.

    .venv-ort/bin/python bench/bench_simulate.py [--models NAME ...] [--samples 4] [--workdir DIR] [--json OUT]
        [--integer-only] [--profile] [--timing-only] [--generic] [--no-layers]

For every zoo model that ``onnxsq quantize`` handles: quantize it (``--calib`` the zoo's photos,
``--calib-count 4``, its preprocessing; seeded feeds for a model that takes no image; cached in
``--workdir``), simulate it on ``--samples`` inputs and compare with onnxruntime's optimized run of the
same QDQ model (precise u8u8 kernels; ``default`` = its default kernels, which saturate u8s8 pairs on
x86 without VNNI). Printed per model: output elements bit-equal (the worst output), the largest
difference in steps, the float islands (count and ops), and simulate's time against onnxruntime's
optimized QDQ run (default kernels, its default threads, same batches, same process), both timed over
the batches after the first (the first builds simulate's caches, tables and island sessions).
``--integer-only``: each model also quantized with ``--integer-only``; a second table gives both
variants' output SQNR against the float model and the float islands left.

``--blas-threads 1`` (default; needs threadpoolctl, which scikit-learn brings): numpy's OpenBLAS runs
one thread. On an oversubscribed machine (this one: load 15-25 on 2 cores while others work) its
threads spin against each other: a (1024 x 144) @ (144 x 16) product took 70-480 ms with two threads
and 0.13 ms with one. ``--blas-threads 0`` leaves OpenBLAS as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from onnxsq.cli.main import run as cli  # noqa: E402
from onnxsq.simulate.api import SimulateConfig, simulate  # noqa: E402
from onnxsq.simulate.execute import Simulator  # noqa: E402
from onnxsq.simulate.program import load_program  # noqa: E402
from zoo.cli_args import preprocess_args, samples, takes_images  # noqa: E402


def quantized(m, workdir: Path, integer_only: bool = False) -> Path:
    out = workdir / f"{m.name}{'.io' if integer_only else ''}.q.onnx"
    if out.exists():
        return out
    if takes_images(m):
        calib = ["--calib", str(m.path.parent.parent / "images"), "--calib-count", "4", *preprocess_args(m)]
    else:
        data = workdir / f"{m.name}-calib"
        data.mkdir(exist_ok=True)
        for i, feed in enumerate(samples(m, [], 4)):
            np.savez(data / f"s{i}.npz", **feed)
        calib = ["--calib", str(data)]
    code = cli(["quantize", str(m.path), *calib, "--report-samples", "0", "-o", str(out), "-q",
                *(["--integer-only"] if integer_only else [])])
    if code != 0:
        raise RuntimeError(f"quantize exit {code}")
    return out


def profile_ops(program, feeds: list[dict], compiled: bool = True) -> dict[str, float]:
    """Seconds per layer kind and main op ("int:Conv", "lut:Sigmoid", "float:Softmax") over ``feeds``
    (a warm run: layers compiled, weight conversions and island sessions made before)."""
    sim = Simulator(program, compiled=compiled)
    for feed in feeds[:1]:
        sim.run(feed)
    sim.profile = {}
    t0 = time.perf_counter()
    for feed in feeds:
        sim.run(feed)
    sim.profile["(total)"] = time.perf_counter() - t0
    return dict(sorted(sim.profile.items(), key=lambda kv: -kv[1]))


def timing(program, model, feeds: list[dict], rounds: int = 3, generic: bool = False) -> dict:
    """Per-batch time of simulate against onnxruntime's optimized QDQ run (default kernels), the least of
    ``rounds`` rounds over the batches (after one warm-up batch):

    - ``wall``: elapsed time against onnxruntime with its default threads;
    - ``cpu``: this thread's CPU time against onnxruntime with one intra-op thread (so that its work is
      this thread's too): the work each does, which a loaded machine does not distort. On a machine
      shared by many processes a long run is preempted more often than a short one, so the elapsed
      ratio grows with the load; the CPU-time ratio does not.

    ``generic``: also the CPU time of the generic interpreter (``Simulator(compiled=False)``: no layer
    compiled for its shapes), in the same rounds: what the compiled plans gain."""
    from onnxsq.runtime import import_ort
    from onnxsq.simulate.compare import ort_session

    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    one = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    session, sim = ort_session(model, precise=False), Simulator(program)
    for s in (session, one):
        s.run(None, feeds[0])
    sim.run(feeds[0])
    t = {"ort": [], "sim": [], "ort_cpu": [], "sim_cpu": []}
    runs = {"ort": lambda f: session.run(None, f), "sim": sim.run, "ort_cpu": lambda f: one.run(None, f),
            "sim_cpu": sim.run}
    if generic:
        plain = Simulator(program, compiled=False)
        plain.run(feeds[0])
        t["generic_cpu"], runs["generic_cpu"] = [], plain.run
    for _ in range(rounds):  # each over every batch in turn (onnxruntime's idle threads spin a while after a run)
        for key, fn in runs.items():
            clock = time.thread_time if key.endswith("_cpu") else time.perf_counter
            for feed in feeds:
                t0 = clock()
                fn(feed)
                t[key].append(clock() - t0)
    least = {k: min(v) for k, v in t.items()}
    return {"sim_ms": round(least["sim"] * 1e3, 2), "ort_ms": round(least["ort"] * 1e3, 3),
            "min_ratio": round(least["sim"] / least["ort"], 1),
            "sim_cpu_ms": round(least["sim_cpu"] * 1e3, 2), "ort_cpu_ms": round(least["ort_cpu"] * 1e3, 3),
            "cpu_ratio": round(least["sim_cpu"] / max(least["ort_cpu"], 1e-6), 1),
            **({"generic_cpu_ms": round(least["generic_cpu"] * 1e3, 2),
                "generic_cpu_ratio": round(least["generic_cpu"] / max(least["ort_cpu"], 1e-6), 1)} if generic else {})}


def bench_one(m, workdir: Path, count: int, profile: bool = False, integer_only: bool = False,
              per_layer: bool = True, timing_only: bool = False, generic: bool = False) -> dict:
    t0 = time.perf_counter()
    path = quantized(m, workdir, integer_only)
    t_quant = time.perf_counter() - t0
    model = onnx.load(str(path))
    program = load_program(model)
    feeds = list(samples(m, zoo.images(), count, seed=1))
    if timing_only:
        return {"model": m.name, "variant": "integer-only" if integer_only else "default",
                **timing(program, model, feeds, generic=generic)}
    cfg = SimulateConfig(float_model=str(m.path), per_layer=per_layer)
    _, report = simulate(program, feeds, model=model, config=cfg)
    s = report.summary
    sqnr = [v for k, v in s.items() if k.startswith("float_sqnr_db:")]
    eq = [v for k, v in s.items() if k.startswith("ort_equal_fraction:")]
    worst = [v for k, v in s.items() if k.startswith("ort_worst_step:")]
    eq_d = [v for k, v in s.items() if k.startswith("ort_default_equal_fraction:")]
    eq_u = [v for k, v in s.items() if k.startswith("ort_unoptimized_equal_fraction:")]
    ops = Counter(c.op for c in report.candidates if c.action in ("float island", "float tail"))
    layer_worst = max((c.details.get("max_step", 0) for c in report.candidates if c.action == "integer"), default=0)
    return {"model": m.name, "variant": "integer-only" if integer_only else "default",
            "sqnr_db": round(min(sqnr), 2) if sqnr else None, "tables": s.get("table_layers", 0),
            "layers": s["layers"], "equal": min(eq) if eq else None,
            "worst_step": max(worst) if worst else None, "default_equal": min(eq_d) if eq_d else None,
            "unoptimized_equal": min(eq_u) if eq_u else None, "reference": s.get("reference", ""),
            "int_layer_worst_step": layer_worst, "islands": s["float_islands"],
            "island_ops": dict(ops), "t_sim": s.get("time_simulate_warm_s", s["time_simulate_s"]),
            "t_ort": s.get("time_onnxruntime_s"), "t_first": s["time_first_batch_s"],
            "ratio": s.get("time_ratio"), "t_quantize": round(t_quant, 1),
            **timing(program, model, feeds, generic=generic),
            **({"profile": {k: round(v, 4) for k, v in list(profile_ops(program, feeds).items())[:8]}}
               if profile else {}),
            **({"profile_generic": {k: round(v, 4) for k, v in list(profile_ops(program, feeds, False).items())[:8]}}
               if profile and generic else {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="zoo model names [default: all]")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "simulate")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--profile", action="store_true", help="also time every op (a second, warm run)")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the time per batch against onnxruntime (least of 3 rounds, alternating)")
    ap.add_argument("--no-layers", action="store_true",
                    help="compare the outputs only (no per-layer onnxruntime sessions: much faster on big models)")
    ap.add_argument("--integer-only", action="store_true",
                    help="also quantize with --integer-only: both rows, and the fidelity cost in dB")
    ap.add_argument("--generic", action="store_true",
                    help="also time the generic interpreter (no compiled layers): the CPU ratio before and after")
    ap.add_argument("--blas-threads", type=int, default=1, help="numpy's BLAS threads (0: as it is)")
    args = ap.parse_args(argv)
    with _blas_threads(args.blas_threads):
        return _run(args)


def _blas_threads(n: int):
    if not n:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS threads are left as they are", file=sys.stderr)
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _run(args) -> int:
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in zoo.models():
        if args.models and m.name not in args.models:
            continue
        for integer_only in (False, True) if args.integer_only else (False,):
            try:
                row = bench_one(m, args.workdir, args.samples, args.profile, integer_only, not args.no_layers,
                                args.timing_only, args.generic)
            except Exception as exc:  # noqa: BLE001 - one model's failure is a row, not the end
                row = {"model": m.name, "variant": "integer-only" if integer_only else "default",
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.timing_only:
        _timing_table(rows)
    else:
        _table(rows)
    if args.integer_only and not args.timing_only:
        _fidelity_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _table(rows: list[dict]) -> None:
    print()
    print("| model | variant | layers | bit-equal outputs | worst step | default-kernel equal | unoptimized equal "
          "| float islands | tables | simulate s | ort s | ratio (sum / least batch) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | – | {r['error']} | | | | | | | | |")
            continue
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(r["island_ops"].items()))
        mark = " (vs default kernels: the precise ones fail)" if "default kernels" in r["reference"] else ""
        print(f"| {r['model']} | {r['variant']} | {r['layers']} | {r['equal']:.5f}{mark} | {r['worst_step']:g} | "
              f"{r['default_equal']:.4f} | {r['unoptimized_equal']:.5f} | "
              f"{r['islands']}{' (' + ops + ')' if ops else ''} | {r['tables']} | {r['t_sim']:.3f} | "
              f"{r['t_ort']:.4f} | {r['ratio']} / {r.get('min_ratio')} |")


def _timing_table(rows: list[dict]) -> None:
    print()
    generic = any("generic_cpu_ms" in r for r in rows)
    extra = " generic CPU ms | generic CPU ratio |" if generic else ""
    print("| model | variant | simulate ms | onnxruntime ms | wall ratio | simulate CPU ms | onnxruntime 1-thread "
          f"CPU ms | CPU ratio |{extra}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if generic else ""))
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | {r['error']} | | | | | |")
        else:
            more = f" {r.get('generic_cpu_ms')} | {r.get('generic_cpu_ratio')} |" if generic else ""
            print(f"| {r['model']} | {r['variant']} | {r['sim_ms']} | {r['ort_ms']} | {r['min_ratio']} | "
                  f"{r['sim_cpu_ms']} | {r['ort_cpu_ms']} | {r['cpu_ratio']} |{more}")


def _fidelity_table(rows: list[dict]) -> None:
    """Per model: output SQNR against the float model, default and integer-only, and what changed."""
    print()
    print("| model | SQNR default dB | SQNR integer-only dB | cost dB | islands default → integer-only "
          "| integer-only: bit-equal, worst step, ratio |")
    print("|---|---|---|---|---|---|")
    by = {(r["model"], r["variant"]): r for r in rows}
    for name in dict.fromkeys(r["model"] for r in rows):
        d, i = by.get((name, "default"), {}), by.get((name, "integer-only"), {})
        if "error" in d or "error" in i or not d or not i:
            print(f"| {name} | {d.get('sqnr_db', d.get('error'))} | {i.get('sqnr_db', i.get('error'))} | | | |")
            continue
        cost = round(d["sqnr_db"] - i["sqnr_db"], 2) if d["sqnr_db"] is not None and i["sqnr_db"] is not None \
            else None
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(i["island_ops"].items()))
        ratio = i.get("min_ratio", i["ratio"])
        print(f"| {name} | {d['sqnr_db']} | {i['sqnr_db']} | {cost} | {d['islands']} → {i['islands']}"
              f"{' (' + ops + ')' if ops else ''} | {i['equal']:.5f}, {i['worst_step']:g}, {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
