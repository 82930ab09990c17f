"""Training throughput and peak memory: ``onnxsq train`` (onnxruntime-training) vs a plain PyTorch loop.

    .venv/bin/python bench/bench_train.py [--iters 60] [--batch 64] [--size 32]

Same architecture (conv-BN-ReLU ×3 → global average pool → FC, He-initialised, identical weights),
same batch, same random data, SGD with momentum 0.9 and weight decay 1e-4 on both sides. Each
side runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own; throughput counts the
training loop only (onnxsq: the report's ``seconds``; PyTorch: the timed loop), after setup.
Needs the training environment (.venv: onnxruntime-training + torch).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

CHANNELS = (32, 64, 64)


def build_onnx(size: int, classes: int = 10, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x, cin = [], [], "input", 3
    for i, c in enumerate(CHANNELS):
        w = (rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        bn = [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}") for k, v in
              (("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", np.zeros(c)), ("var", np.ones(c)))]
        inits += bn
        stride = 2 if i else 1
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("BatchNormalization", [f"c{i}", *[t.name for t in bn]], [f"b{i}"], name=f"bn{i}"),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", c
    inits += [numpy_helper.from_array((rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32),
                                      "fc.weight"), numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def data(n: int, size: int):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = (rng.standard_normal((n, 3, size, size)) + y[:, None, None, None] * 0.1).astype(np.float32)
    return x, y


def run_onnxsq(args) -> dict:
    import onnxsq
    from onnxsq.data.classification import ArrayDataset

    x, y = data(args.batch * 8, args.size)
    t0 = time.perf_counter()
    _, report = onnxsq.train(build_onnx(args.size), ArrayDataset(x, y), iters=args.iters, batch_size=args.batch,
                             lr=0.01, momentum=0.9, weight_decay=1e-4, display=0, device=args.device)
    s = report.summary
    return {
        "images_per_s": s["iterations"] * s["batch_size"] / s["seconds"],
        "setup_s": time.perf_counter() - t0 - s["seconds"],
        "device": s["device"],
    }


def run_torch(args) -> dict:
    import torch
    from onnx import numpy_helper
    from torch import nn

    model = build_onnx(args.size)
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    layers, cin = [], 3
    for i, c in enumerate(CHANNELS):
        conv = nn.Conv2d(cin, c, 3, stride=2 if i else 1, padding=1, bias=False)
        conv.weight.data.copy_(w[f"conv{i}.weight"])
        layers += [conv, nn.BatchNorm2d(c), nn.ReLU()]
        cin = c
    fc = nn.Linear(cin, 10)
    fc.weight.data.copy_(w["fc.weight"])
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = data(args.batch * 8, args.size)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        idx = torch.from_numpy(rng.permutation(len(x))[:args.batch])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    return {"images_per_s": args.iters * args.batch / secs, "setup_s": 0.0, "device": "cpu",
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", choices=["onnxsq", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = run_onnxsq(args) if args.side == "onnxsq" else run_torch(args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {}
    for side in ("onnxsq", "torch"):
        cmd = [sys.executable, __file__, "--side", side, "--iters", str(args.iters), "--batch", str(args.batch),
               "--size", str(args.size), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = results["onnxsq"], results["torch"]
    print(f"training: CNN conv{CHANNELS} on 3x{args.size}x{args.size}, batch {args.batch}, {args.iters} iterations, "
          f"SGD momentum 0.9, wd 1e-4 (one run each)")
    print(f"| {'':22} | {'onnxsq train (' + a['device'] + ')':>22} | {'PyTorch CPU loop':>18} | {'ratio':>7} |")
    print(f"|{'-' * 24}|{'-' * 24}:|{'-' * 20}:|{'-' * 9}:|")
    print(f"| {'throughput (images/s)':22} | {a['images_per_s']:22.0f} | {b['images_per_s']:18.0f} | "
          f"{a['images_per_s'] / b['images_per_s']:7.2f} |")
    print(f"| {'peak RSS (MiB)':22} | {a['peak_rss_mib']:22.0f} | {b['peak_rss_mib']:18.0f} | "
          f"{a['peak_rss_mib'] / b['peak_rss_mib']:7.2f} |")
    print(f"| {'setup (s)':22} | {a['setup_s']:22.2f} | {b['setup_s']:18.2f} | {'':7} |")


if __name__ == "__main__":
    main()
