"""What each training-speed change gained: onnxsq's step with the changes switched off one by one.

    .venv/bin/python bench/bench_train_ablation.py [--nets digits decoder] [--rounds 3] [--threads 1]

Variants, cumulative (each adds one change to the one before):

* ``before``: ConvTranspose as a Conv over a zero-inserted input, Relu with onnxruntime's ReluGrad,
  weights copied out of and back into onnxruntime every step (the loop as it was);
* ``+subpixel``: ConvTranspose as one Conv over its output phases, its kernel built by two Gathers,
  the phases interleaved by one 6-D Transpose;
* ``+interleave``: rows by one single-axis Transpose, columns by a permutation GEMM;
* ``+kernel GEMM``: the phase kernel by one 0/1 selection GEMM instead of the Gathers;
* ``+relu mask``: Relu as ``x · (x > 0)``;
* ``+in place``: the update on onnxruntime's own buffers (no copies): today's loop.

The switched-off forms are re-created here by patching onnxsq's modules in the subprocess that runs
the variant (nothing in the package keeps them). Each variant and PyTorch run in their own
subprocess, rounds alternate the order; the table shows the median step's process CPU time (robust
on a shared machine; with one thread it is the work done) and the ratio to PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

VARIANTS = ["before", "+subpixel", "+interleave", "+kernel GEMM", "+relu mask", "+in place"]


def _one_transpose(model, namer, tag, y, c, s, hw, nodes):
    """The phases interleaved by one general 6-D Transpose."""
    from onnxsq.training.rewrites import _const, _node

    (sh, sw), (hq, wq) = s, hw
    y = _node(nodes, namer, "Reshape", [y, _const(model, namer, f"{tag}/split", np.array(
        [-1, c, sh, sw, hq, wq], np.int64))], f"{tag}/phases")
    y = _node(nodes, namer, "Transpose", [y], f"{tag}/interleave", perm=[0, 1, 4, 2, 5, 3])
    return _node(nodes, namer, "Reshape", [y, _const(model, namer, f"{tag}/merge", np.array(
        [-1, c, hq * sh, wq * sw], np.int64))], f"{tag}/full")


def _gather_kernel(model, node, namer, geo, nodes):
    """The phase kernel by Concat (zero taps) and two Gathers, as first written."""
    from onnxsq.training.rewrites import _const, _node, _taps

    tag, (kh, kw), (sh, sw), g = node.name or node.output[0], geo["k"], geo["s"], geo["g"]
    cin, cout_g = geo["cin"], geo["cout_g"]
    mh, mw = _taps(geo)
    w = node.input[1]
    for axis, extra, shape in ((2, mh * sh - kh, [cin, cout_g, mh * sh - kh, kw]),
                               (3, mw * sw - kw, [cin, cout_g, mh * sh, mw * sw - kw])):
        if extra:
            zeros = _const(model, namer, f"{tag}/zero{axis}", np.zeros(shape, np.float32))
            w = _node(nodes, namer, "Concat", [w, zeros], f"{tag}/ext{axis}", axis=axis)
    w = _node(nodes, namer, "Reshape", [w, _const(model, namer, f"{tag}/grp", np.array(
        [g, cin // g, cout_g, mh * sh, mw * sw], np.int64))], f"{tag}/w5")
    for axis, s_, m_ in ((3, sh, mh), (5, sw, mw)):
        idx = np.array([[(m_ - 1 - t) * s_ + r for t in range(m_)] for r in range(s_)], np.int64)
        w = _node(nodes, namer, "Gather", [w, _const(model, namer, f"{tag}/taps{axis}", idx)], f"{tag}/ph{axis}",
                  axis=axis)
    w = _node(nodes, namer, "Transpose", [w], f"{tag}/order", perm=[0, 2, 3, 5, 1, 4, 6])
    return _node(nodes, namer, "Reshape", [w, _const(model, namer, f"{tag}/kshape", np.array(
        [g * cout_g * sh * sw, cin // g, mh, mw], np.int64))], f"{tag}/kernel")


def _patch(variant: str) -> None:
    from onnxsq.training import loop, rewrites

    level = VARIANTS.index(variant)
    if level < 1:
        rewrites._subpixel = rewrites._zero_inserted
    if level < 2:
        rewrites._interleave = _one_transpose
    if level < 3:
        rewrites._subpixel_kernel = _gather_kernel
    if level < 4:
        rewrites.SPEED_REWRITES.clear()
    if level < 5:
        def bind_copies(self, state) -> None:
            self.state = state
            self.params = {n: state.parameters[n] for n in self.graph.trainable}
            self.w = {n: np.array(p.data, copy=True) for n, p in self.params.items()}
            self._grads = {}

        def write_back(self) -> None:
            for n, p in self.params.items():
                p.data = self.w[n]

        loop.Trainer._bind = bind_copies
        loop.Trainer._write_weights = write_back


def run_variant(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_train as bt

    if args.variant == "torch":
        return bt.run_torch(args)
    _patch(args.variant)
    return bt.run_onnxsq(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["digits", "decoder"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    from bench_train import NETS

    sides = [*VARIANTS, "torch"]
    print(f"onnxsq's median step, process CPU ms ({args.iters} iterations, {args.rounds} alternating rounds, "
          f"threads {args.threads}); ratio = PyTorch's step / this one")
    print("| net | " + " | ".join(sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for net in args.nets:
        ms: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                cmd = [sys.executable, __file__, "--variant", side, "--net", net, "--iters", str(args.iters),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{side} on {net} failed:\n{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                ms[side].append(NETS[net]["batch"] / res["images_per_cpu_s"] * 1e3)
        torch = statistics.median(ms["torch"])
        cells = [f"{statistics.median(v):.1f} ({torch / statistics.median(v):.2f}x)" for v in ms.values()]
        print(f"| {net} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
