"""Training throughput and peak memory: ``onnxsq train`` (onnxruntime-training) vs a plain PyTorch loop.

    .venv/bin/python bench/bench_train.py [--nets digits decoder cnn32] [--rounds 3] [--iters 60]
    .venv/bin/python bench/bench_train.py --profile [--nets ...]   # where onnxsq's step time goes
    .venv/bin/python bench/bench_train.py --baseline DIR           # + onnxsq from another tree (before/after)

Nets (same architecture, identical initial weights, same batches, same optimizer on both sides):

* ``digits``: 4 conv-BN-ReLU on 1×8×8 (16, 32, pool, 32, 64) → GAP → FC, batch 32, SGD momentum 0.9,
  weight decay 1e-4 (the digits classifier's shape);
* ``decoder``: conv(3→16, /2) → conv(16→32, /2) → ConvTranspose(32→16, k4 ×2) → BN-ReLU →
  ConvTranspose(16→4, k4 ×2) per-pixel logits on 3×32×32, batch 16, AdamW lr 1e-3 wd 1e-4;
* ``cnn32``: conv-BN-ReLU ×3 (32, 64/2, 64/2) on 3×32×32 → GAP → FC, batch 64, SGD (the old bench).

Each side runs in its own subprocess (its peak RSS, ``ru_maxrss``, is its own); rounds alternate the
order (onnxsq first, then PyTorch first, ...) and the table shows medians. Throughput is the batch over the
median step time after WARMUP steps (robust to a shared machine's stalls), and "loop" the whole training
loop (onnxsq: the report's ``seconds``; PyTorch: the timed loop), after setup. Threads: each side's
default (onnxruntime: one per physical core; torch.get_num_threads()) or ``--threads N`` for both.
Needs the training environment (.venv: onnxruntime-training + torch).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NETS = {
    "digits": {"size": 8, "in_ch": 1, "batch": 32, "optimizer": "sgd", "lr": 0.05, "task": "classification"},
    "decoder": {"size": 32, "in_ch": 3, "batch": 16, "optimizer": "adamw", "lr": 1e-3, "task": "segmentation"},
    "cnn32": {"size": 32, "in_ch": 3, "batch": 64, "optimizer": "sgd", "lr": 0.01, "task": "classification"},
}
CLASSES = {"digits": 10, "decoder": 4, "cnn32": 10}
# (kind, cin, cout, stride) per layer; "pool" = 2×2 max pool; "up" = ConvTranspose k4 s2 p1
LAYERS = {
    "digits": [("conv", 1, 16, 1), ("conv", 16, 32, 1), ("pool",), ("conv", 32, 32, 1), ("conv", 32, 64, 1)],
    "decoder": [("conv", 3, 16, 2), ("conv", 16, 32, 2), ("up", 32, 16, 2), ("upout", 16, 4, 2)],
    "cnn32": [("conv", 3, 32, 1), ("conv", 32, 64, 2), ("conv", 64, 64, 2)],
}


def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def build_onnx(net: str, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    spec, rng = NETS[net], np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"

    def bn(x: str, c: int, i: int) -> str:
        ts = [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}") for k, v in
              (("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", np.zeros(c)), ("var", np.ones(c)))]
        inits.extend(ts)
        nodes.append(helper.make_node("BatchNormalization", [x, *[t.name for t in ts]], [f"b{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    cin = spec["in_ch"]
    for i, layer in enumerate(LAYERS[net]):
        if layer[0] == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], name=f"pool{i}", kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{i}"
            continue
        kind, cin, cout, s = layer
        if kind == "conv":
            inits.append(numpy_helper.from_array(_he(rng, (cout, cin, 3, 3), cin * 9), f"conv{i}.weight"))
            nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}",
                                          pads=[1, 1, 1, 1], strides=[s, s]))
            x = bn(f"c{i}", cout, i)
        else:  # ConvTranspose k4 s2 p1 (weight Cin × Cout × 4 × 4)
            inits.append(numpy_helper.from_array(_he(rng, (cin, cout, 4, 4), cin * 4), f"up{i}.weight"))
            ins = [x, f"up{i}.weight"]
            if kind == "upout":
                inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"up{i}.bias"))
                ins.append(f"up{i}.bias")
            out = "logits" if kind == "upout" else f"c{i}"
            nodes.append(helper.make_node("ConvTranspose", ins, [out], name=f"up{i}", kernel_shape=[4, 4],
                                          strides=[2, 2], pads=[1, 1, 1, 1]))
            x = out if kind == "upout" else bn(out, cout, i)
        cin = cout
    size, classes = spec["size"], CLASSES[net]
    if spec["task"] == "classification":
        fc = (rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32)
        inits += [numpy_helper.from_array(fc, "fc.weight"), numpy_helper.from_array(np.zeros(classes, np.float32),
                                                                                   "fc.bias")]
        nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
                  helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
        out_shape = ["N", classes]
    else:
        out_shape = ["N", classes, size, size]
    graph = helper.make_graph(nodes, f"bench_{net}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["N", spec["in_ch"], size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def data(net: str, n: int):
    spec, rng = NETS[net], np.random.default_rng(1)
    size, classes = spec["size"], CLASSES[net]
    if spec["task"] == "classification":
        y = rng.integers(0, classes, n).astype(np.int64)
        x = rng.standard_normal((n, spec["in_ch"], size, size)) + y[:, None, None, None] * 0.1
        return x.astype(np.float32), y
    y = np.zeros((n, size, size), np.int64)  # a square of class 1..3 on background 0
    x = rng.standard_normal((n, spec["in_ch"], size, size)).astype(np.float32) * 0.3
    for i in range(n):
        c, (r0, c0) = int(rng.integers(1, classes)), rng.integers(0, size // 2, 2)
        y[i, r0:r0 + size // 2, c0:c0 + size // 2] = c
        x[i, :, r0:r0 + size // 2, c0:c0 + size // 2] += c * 0.5
    return x, y


WARMUP = 5  # iterations left out of the per-step median (first-run allocations, oneDNN primitives)


def _rates(wall: list[float], cpu: list[float], batch: int, loop_s: float) -> dict:
    """Images per second from the median step (wall clock and process CPU time) and from the whole loop."""
    return {"images_per_s": batch / float(np.median(wall[WARMUP:])),
            "images_per_cpu_s": batch / float(np.median(cpu[WARMUP:])),
            "loop_images_per_s": len(wall) * batch / loop_s}


class _Clock:
    """Per-step wall and process-CPU times (the CPU time is what a loaded machine does not inflate)."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.last = [], [], None

    def tick(self, *_a) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.last is not None:
            self.wall.append(now[0] - self.last[0])
            self.cpu.append(now[1] - self.last[1])
        self.last = now


def run_onnxsq(args) -> dict:
    import onnxsq
    from onnxsq.data.classification import ArrayDataset

    spec = NETS[args.net]
    x, y = data(args.net, spec["batch"] * 8)
    clock = _Clock()
    t0 = time.perf_counter()
    _, report = onnxsq.train(build_onnx(args.net), ArrayDataset(x, y), iters=args.iters, batch_size=spec["batch"],
                             lr=spec["lr"], optimizer=spec["optimizer"], momentum=0.9, weight_decay=1e-4, display=0,
                             device=args.device, threads=args.threads, on_step=clock.tick)
    s = report.summary
    return {**_rates(clock.wall, clock.cpu, spec["batch"], s["seconds"]), "device": s["device"],
            "setup_s": time.perf_counter() - t0 - s["seconds"], "loss": s["final_loss"]}


def torch_net(net: str):
    import torch
    from onnx import numpy_helper
    from torch import nn

    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in build_onnx(net).graph.initializer}
    layers = []
    for i, layer in enumerate(LAYERS[net]):
        if layer[0] == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        kind, cin, cout, s = layer
        if kind == "conv":
            m = nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False)
            m.weight.data.copy_(w[f"conv{i}.weight"])
        else:
            m = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=kind == "upout")
            m.weight.data.copy_(w[f"up{i}.weight"])
            if kind == "upout":
                m.bias.data.zero_()
        layers.append(m)
        if kind != "upout":
            layers += [nn.BatchNorm2d(cout), nn.ReLU()]
    if NETS[net]["task"] == "classification":
        fc = nn.Linear(LAYERS[net][-1][2], CLASSES[net])
        fc.weight.data.copy_(w["fc.weight"])
        fc.bias.data.zero_()
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc]
    return nn.Sequential(*layers)


def run_torch(args) -> dict:
    import torch
    from torch import nn

    spec = NETS[args.net]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = torch_net(args.net)
    opt_cls = torch.optim.SGD if spec["optimizer"] == "sgd" else torch.optim.AdamW
    kw = {"momentum": 0.9} if spec["optimizer"] == "sgd" else {}
    opt = opt_cls(model.parameters(), lr=spec["lr"], weight_decay=1e-4, **kw)
    x, y = data(args.net, spec["batch"] * 8)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    rng = np.random.default_rng(0)
    batch, losses, clock = spec["batch"], [], _Clock()
    clock.tick()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        idx = torch.from_numpy(rng.permutation(len(x))[:batch])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        clock.tick()
    secs = time.perf_counter() - t0
    return {**_rates(clock.wall, clock.cpu, batch, secs), "setup_s": 0.0, "device": "cpu",
            "threads": torch.get_num_threads(), "loss": float(np.mean(losses[-20:]))}


def profile(args) -> dict:
    """Seconds per phase of onnxsq's training step (see bench/train_profile.py)."""
    from train_profile import profile_phases

    spec = NETS[args.net]
    x, y = data(args.net, spec["batch"] * 8)
    return profile_phases(build_onnx(args.net), x, y, iters=args.iters, batch=spec["batch"], lr=spec["lr"],
                          optimizer=spec["optimizer"], ort_ops=args.ort_ops, threads=args.threads)


def _side(args, net: str, side: str) -> dict:
    """One side's run in a fresh process; "baseline" is onnxsq imported from ``--baseline DIR``."""
    env = dict(os.environ)
    if side == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.baseline).resolve()), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--side", "onnxsq" if side == "baseline" else side, "--net", net,
           "--iters", str(args.iters), "--device", args.device, "--threads", str(args.threads),
           *(["--ort-ops"] if args.ort_ops else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{side} on {net} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratios(runs: dict[str, list[dict]], key: str, side: str = "onnxsq") -> list[float]:
    """``side`` over PyTorch per round (rounds pair up: the same round ran every side back to back)."""
    return [a[key] / b[key] for a, b in zip(runs[side], runs["torch"], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["digits", "decoder"], choices=list(NETS))
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads of both sides (0: their defaults)")
    ap.add_argument("--profile", action="store_true", help="print where onnxsq's step time goes instead")
    ap.add_argument("--ort-ops", action="store_true", help="with --profile: onnxruntime's time per op type")
    ap.add_argument("--baseline", metavar="DIR", help="also run onnxsq imported from DIR (another checkout's root, "
                    "e.g. `git archive COMMIT onnxsq | tar -x -C DIR`) in the same rounds: before/after rows")
    ap.add_argument("--side", choices=["onnxsq", "torch", "profile"], help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = {"onnxsq": run_onnxsq, "torch": run_torch, "profile": profile}[args.side](args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if args.profile:
        for net in args.nets:
            p = _side(args, net, "profile")
            total, ops = p.pop("total"), p.pop("ort_ops", {})
            print(f"\n{net}: process CPU ms per iteration by phase ({args.iters} iterations, median step; "
                  f"threads {args.threads or 'default'})")
            print("| phase | ms | share |\n|---|---:|---:|")
            for k, v in p.items():
                if k != "peak_rss_mib":
                    print(f"| {k} | {v * 1e3:.2f} | {v / total:.0%} |")
            print(f"| total | {total * 1e3:.2f} | |")
            if ops:
                print(f"\n{net}: onnxruntime kernel time per op type, ms per iteration (profiling on)")
                print("| op | ms |\n|---|---:|")
                for k, v in list(ops.items())[:15]:
                    print(f"| {k} | {v * 1e3:.2f} |")
        return
    _table(args)

def _table(args) -> None:
    """The same-run table: every side in its own process, the order rotating each round, medians."""
    sides = ["onnxsq", "torch", *(["baseline"] if args.baseline else [])]
    print(f"training throughput, {args.iters} iterations per run, {args.rounds} alternating rounds, medians; "
          f"threads: {args.threads or 'defaults'}; img/s from the median step after {WARMUP} warm-up steps "
          "(wall clock, and per second of process CPU time), 'loop' from the whole loop's wall clock"
          + (f"; baseline: onnxsq from {args.baseline}" if args.baseline else ""))
    print("| net | onnxsq img/s | PyTorch img/s | ratio (min-max) | CPU-time ratio | loop ratio | onnxsq / PyTorch "
          "RSS MiB | final loss onnxsq / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for net in args.nets:
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                runs[side].append(_side(args, net, side))
        med = {s: {k: statistics.median(d[k] for d in v) for k in ("images_per_s", "peak_rss_mib", "loss")}
               for s, v in runs.items()}
        b = med["torch"]
        for side in [s for s in sides if s != "torch"]:
            ratio = functools.partial(_ratios, runs, side=side)
            a, wall = med[side], ratio("images_per_s")
            print(f"| {net}{' (baseline)' if side == 'baseline' else ''} | {a['images_per_s']:.0f} | "
                  f"{b['images_per_s']:.0f} | {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) | "
                  f"{statistics.median(ratio('images_per_cpu_s')):.2f} | "
                  f"{statistics.median(ratio('loop_images_per_s')):.2f} | {a['peak_rss_mib']:.0f} / "
                  f"{b['peak_rss_mib']:.0f} | {a['loss']:.3f} / {b['loss']:.3f} |")


if __name__ == "__main__":
    main()
