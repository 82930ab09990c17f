"""What each training-speed change gained: onnxsq's step with the changes switched off one by one.

    .venv/bin/python bench/bench_train_ablation.py [--nets digits decoder] [--rounds 3] [--threads 1]

Variants, cumulative (each adds one change to the one before):

* ``before``: ConvTranspose as a Conv over a zero-inserted input, Relu with onnxruntime's ReluGrad,
  weights copied out of and back into onnxruntime every step (the loop as it was);
* ``+subpixel``: ConvTranspose as one Conv over its output phases, interleaved by one 6-D Transpose;
* ``+split transpose``: the interleave as two single-axis Transposes;
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

VARIANTS = ["before", "+subpixel", "+split transpose", "+relu mask", "+in place"]


def _patch(variant: str) -> None:
    from onnxsq.training import loop, rewrites

    level = VARIANTS.index(variant)
    if level < 1:
        rewrites._subpixel = rewrites._zero_inserted
    if level < 2:
        def one_transpose(model, namer, tag, y, c, s, hw, nodes):
            (sh, sw), (hq, wq) = s, hw
            y = rewrites._node(nodes, namer, "Reshape", [y, rewrites._const(model, namer, f"{tag}/split", np.array(
                [-1, c, sh, sw, hq, wq], np.int64))], f"{tag}/phases")
            y = rewrites._node(nodes, namer, "Transpose", [y], f"{tag}/interleave", perm=[0, 1, 4, 2, 5, 3])
            return rewrites._node(nodes, namer, "Reshape", [y, rewrites._const(model, namer, f"{tag}/merge", np.array(
                [-1, c, hq * sh, wq * sw], np.int64))], f"{tag}/full")
        rewrites._interleave = one_transpose
    if level < 3:
        rewrites.SPEED_REWRITES.clear()
    if level < 4:
        def bind_copies(self, state) -> None:
            self.state = state
            self.params = {n: state.parameters[n] for n in self.graph.trainable}
            self.w = {n: np.array(p.data, copy=True) for n, p in self.params.items()}

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
