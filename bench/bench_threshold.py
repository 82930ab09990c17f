"""Benchmark and accuracy study of ``onnxsq threshold``.

    python bench/bench_threshold.py               # time and peak memory on the ResNet-50-sized model
    python bench/bench_threshold.py --accuracy    # per-layer fractions vs --global vs channelwise:
                                                  # SQNR on the ResNet-50-sized model and accuracy of
                                                  # a small CNN trained on sklearn digits (needs torch)

Timings are the pass alone (``threshold(model_proto)``: deep copy, search, write-back, report), the
median of ``--repeat`` runs; peak memory is measured in a fresh process per configuration (peak RSS
increase over the built model, which includes the pass's copy of it; and the peak of Python/numpy
allocations traced by tracemalloc, which does not see protobuf's own memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "exact layerwise": {},
    "grid layerwise": {"search": "grid"},
    "exact channelwise": {"channelwise": True},
    "grid channelwise": {"search": "grid", "channelwise": True},
    "global 0.8 (exact)": {"global_fraction": 0.8},
}


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so building the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def one(name: str, repeat: int) -> dict:
    from resnet50 import build_resnet50

    from onnxsq.passes.threshold import threshold

    model = build_resnet50(seed=0, opset=13)
    gc.collect()
    ok = _reset_peak_rss()
    rss0 = _status_mib("VmRSS")
    _, report = threshold(model, **CONFIGS[name])
    peak_rss = _status_mib("VmHWM") - rss0 if ok else float("nan")
    del _
    gc.collect()
    tracemalloc.start()
    threshold(model, **CONFIGS[name])
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        threshold(model, **CONFIGS[name])
        times.append(time.perf_counter() - t0)
    return {"name": name, "median_s": statistics.median(times), "min_s": min(times), "peak_rss_mib": peak_rss,
            "numpy_peak_mib": traced, "model_mib": model.ByteSize() / 2**20,
            "zero_fraction": report.summary["zero_fraction"], "layers": report.summary["layers thresholded"]}


def bench(repeat: int) -> None:
    print(f"threshold on the ResNet-50-sized model (bench/resnet50.py, seed 0, opset 13), {os.cpu_count()} CPUs, "
          f"median of {repeat}\n")
    print("| configuration | time (median) | time (min) | peak RSS increase | traced peak | conv zeros | layers |")
    print("|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--repeat", str(repeat)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['median_s']:.3f} s | {r['min_s']:.3f} s | {r['peak_rss_mib']:.0f} MiB | "
              f"{r['numpy_peak_mib']:.0f} MiB | {100 * r['zero_fraction']:.1f}% | {r['layers']} |")
    print(f"\n(model: {r['model_mib']:.0f} MiB; the peak RSS increase includes the pass's own copy of it)")


# --- accuracy study -------------------------------------------------------------------------


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = np.sum((ref.astype(np.float64) - out) ** 2)
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise)) if noise > 0 else float("inf")


def _evaluate(models: dict, feeds: np.ndarray, input_name: str, labels: np.ndarray | None) -> list[list]:
    from onnxsq.runtime import make_session

    outs = {k: np.concatenate([make_session(m).run(None, {input_name: feeds[i:i + 64]})[0]
                               for i in range(0, len(feeds), 64)]) for k, (m, _) in models.items()}
    ref = outs["dense"]
    rows = []
    for k, (_, sparsity) in models.items():
        row = [k, f"{100 * sparsity:.1f}%", f"{_sqnr(ref, outs[k]):.1f}",
               f"{100 * np.mean(outs[k].argmax(1) == ref.argmax(1)):.1f}%"]
        if labels is not None:
            row.append(f"{100 * np.mean(outs[k].argmax(1) == labels):.1f}%")
        rows.append(row)
    return rows


def _variants(model, fractions=(0.5, 0.7, 0.8, 0.9), **common) -> dict:
    """dense; the defaults (layerwise, channelwise, global matched to the layerwise sparsity);
    then per-layer vs channelwise vs global at the same fraction with the caps off."""
    from onnxsq.passes.threshold import threshold
    from onnxsq.sparsity import CONV_OPS, totals, weight_stats

    def conv_sparsity(m) -> float:
        return totals(weight_stats(m), ops=CONV_OPS).zero_fraction

    out = {"dense": (model, conv_sparsity(model))}
    lw, rep = threshold(model, **common)
    out["defaults: layerwise 0.4/0.8/0.9"] = (lw, conv_sparsity(lw))
    cw, _ = threshold(model, channelwise=True, **common)
    out["defaults: channelwise"] = (cw, conv_sparsity(cw))
    matched = rep.summary["zero_fraction"]
    gl, _ = threshold(model, global_fraction=matched, **common)
    out[f"defaults: global {matched:.3f} (matched)"] = (gl, conv_sparsity(gl))
    nocap = dict(value_max=1e9, value_maxratio=1.0, **common)
    for f in fractions:
        for label, kw in (("layerwise", dict(fraction_low=f, fraction_mid=f, fraction_high=f)),
                          ("channelwise", dict(fraction_low=f, fraction_mid=f, fraction_high=f, channelwise=True)),
                          ("global", dict(global_fraction=f))):
            m, _ = threshold(model, **kw, **nocap)
            out[f"no caps, {f:.1f}: {label}"] = (m, conv_sparsity(m))
    return out


def _train_digits_cnn(seed: int = 0):
    """A small CNN (1→32→64→128 convs, GAP, FC) trained on sklearn digits; returns (onnx model, test x, y)."""
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(15):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    nodes, cur = [], "input"
    for i, idx in enumerate((0, 2, 5)):
        nodes.append(helper.make_node("Conv", [cur, f"{idx}.weight", f"{idx}.bias"], [f"c{i}"], name=f"conv{i + 1}",
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i + 1}"))
        cur = f"r{i}"
        if i == 1:
            nodes.append(helper.make_node("MaxPool", [cur], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
            cur = "pool"
    nodes += [helper.make_node("GlobalAveragePool", [cur], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "9.weight", "9.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model, xte, yte


def _print(title: str, columns: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r) + " |")


def accuracy() -> None:
    from resnet50 import build_resnet50

    model = build_resnet50(seed=0, opset=13)
    feeds = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    # random weights have no redundancy to exploit and random inputs give near-constant argmaxes, so
    # only the SQNR of the logits says something here; the trained CNN below shows accuracy
    rows = [r[:3] for r in _evaluate(_variants(model, fractions=(0.8,)), feeds, "input", None)]
    _print("ResNet-50-sized model (random He weights, 16 random inputs), no fine-tuning",
           ["variant", "conv zeros", "logit SQNR dB"], rows)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("\n(torch is not installed here: skipping the digits CNN; run with .venv/bin/python)")
        return
    t0 = time.perf_counter()
    cnn, xte, yte = _train_digits_cnn()
    rows = _evaluate(_variants(cnn), xte, "input", yte)
    _print(f"small CNN on sklearn digits ({len(xte)} test images; trained in {time.perf_counter() - t0:.0f} s), "
           "no fine-tuning", ["variant", "conv zeros", "logit SQNR dB", "top-1 agree", "test accuracy"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.repeat)))
    elif args.accuracy:
        accuracy()
    else:
        bench(args.repeat)


if __name__ == "__main__":
    main()
