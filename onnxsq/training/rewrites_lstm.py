"""Training-time rewrite of ``LSTM``, unrolled in time into MatMul, Sigmoid, Tanh, Mul and Add.

onnxruntime-training 1.19's own LSTM gradient is unusable on the CPU: LSTMGrad runs the forward direction
only ("LSTM and LSTMGrad kernel only supports the forward direction for now"), its gradient graph is
refused without initial states ("Type 'tensor(float)' of input parameter (y) of operator (LSTMGrad) ...
is invalid") and the training step dies of SIGSEGV with them (measured on a 7-step, 5-unit LSTM).

On a static sequence length ``T`` each direction ``d`` is ``T`` steps of the ONNX equations (gate order
i, o, f, c; default activations): the input products for every step at once, ``X·W_dᵀ + Wb_d + Rb_d``,
then per step ``g = xw_t + H·R_dᵀ``, ``C = σ(f)·C + σ(i)·tanh(c)``, ``H = σ(o)·tanh(C)``; the reverse
direction walks ``t`` backwards. ``Y`` stacks the ``H`` s (``[T, dirs, N, hidden]``), ``Y_h``/``Y_c`` are the
last states. ``W``, ``R``, ``B`` stay the model's tensors (read through Gather/Transpose). Refused (left as
it is): ``sequence_lens``, peepholes, ``layout = 1``, ``clip``, ``input_forget``, other activations, an
unknown ``T``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attr

DEFAULT_ACTS = ["Sigmoid", "Tanh", "Tanh"]


class _Emit:
    def __init__(self, model: onnx.ModelProto, namer, tag: str) -> None:
        self.model, self.namer, self.tag, self.nodes = model, namer, tag, []

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.namer(f"{self.tag}/{base}")
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def __call__(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.namer(f"{self.tag}/{base}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.namer(f"{self.tag}/{base}_{op}"), **attrs))
        return out


def _check(node: onnx.NodeProto, dims) -> tuple[int, int, int]:
    ins = list(node.input) + [""] * (8 - len(node.input))
    acts = [a.decode() if isinstance(a, bytes) else a for a in (attr(node, "activations") or [])]
    if ins[4] or ins[7] or int(attr(node, "layout", 0)) or attr(node, "clip") is not None \
            or int(attr(node, "input_forget", 0)) or any(a != d for a, d in zip(acts, DEFAULT_ACTS * 2)):
        raise ValueError("an LSTM with sequence_lens, peepholes, layout=1, clip, input_forget or other "
                         "activations is not rewritten")
    if not dims or len(dims) != 3 or not isinstance(dims[0], int) or dims[0] < 1:
        raise ValueError("an LSTM with an unknown sequence length is not rewritten")
    batch = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else 0  # 0: known only at run time
    return int(dims[0]), batch, int(attr(node, "hidden_size"))


def _zeros(e: _Emit, xw: str, d: int, batch: int, hidden: int) -> str:
    """Zero initial states ``[N, hidden]``: a constant for a static batch, else ``0 ·`` the first step's
    input products (``[N, hidden]`` of them: the batch known only at run time)."""
    if batch:
        return e.const(f"zeros{d}", np.zeros((batch, hidden), np.float32))
    first = e("Gather", [xw, e.const(f"first{d}", np.array(0, np.int64))], f"xw0_{d}", axis=0)
    part = e("Slice", [first, e.const(f"z0_{d}", np.array([0])), e.const(f"zh_{d}", np.array([hidden])),
                       e.const(f"z1_{d}", np.array([1]))], f"xw0h_{d}")
    return e("Mul", [part, e.const(f"zero{d}", np.array(0.0, np.float32))], f"zeros{d}")


def _direction(e: _Emit, ins: list[str], d: int, steps: int, batch: int, hidden: int, reverse: bool):
    """Unroll direction ``d``: (the H of every step in time order, last H, last C)."""
    idx = e.const(f"d{d}", np.array(d, np.int64))
    w_t = e("Transpose", [e("Gather", [ins[1], idx], f"W{d}", axis=0)], f"Wt{d}", perm=[1, 0])
    r_t = e("Transpose", [e("Gather", [ins[2], idx], f"R{d}", axis=0)], f"Rt{d}", perm=[1, 0])
    xw = e("MatMul", [ins[0], w_t], f"xw{d}")  # [T, N, 4H]
    if ins[3]:
        b = e("Gather", [ins[3], idx], f"B{d}", axis=0)
        halves = e.const(f"bshape{d}", np.array([2, 4 * hidden], np.int64))
        bsum = e("ReduceSum", [e("Reshape", [b, halves], f"Bpair{d}"), e.const(f"ax0_{d}", np.array([0]))],
                 f"Bsum{d}", keepdims=0)
        xw = e("Add", [xw, bsum], f"xwb{d}")
    zeros = _zeros(e, xw, d, batch, hidden) if not (ins[5] and ins[6]) else ""
    # a Gather of one index drops the direction axis: [N, H]
    h = e("Gather", [ins[5], idx], f"h0_{d}", axis=0) if ins[5] else zeros
    c = e("Gather", [ins[6], idx], f"c0_{d}", axis=0) if ins[6] else zeros
    split = e.const(f"split{d}", np.array([hidden] * 4, np.int64))
    hs: dict[int, str] = {}
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        g = e("Add", [e("Gather", [xw, e.const(f"t{d}_{t}", np.array(t, np.int64))], f"xw{d}_{t}", axis=0),
                      e("MatMul", [h, r_t], f"hr{d}_{t}")], f"g{d}_{t}")
        outs = [e.namer(f"{e.tag}/{k}{d}_{t}") for k in "iofc"]
        e.nodes.append(helper.make_node("Split", [g, split], outs, name=e.namer(f"{e.tag}/split{d}_{t}"), axis=1))
        i, o, f = (e("Sigmoid", [outs[k]], f"s{'iof'[k]}{d}_{t}") for k in range(3))
        c = e("Add", [e("Mul", [f, c], f"fc{d}_{t}"),
                      e("Mul", [i, e("Tanh", [outs[3]], f"tc{d}_{t}")], f"ic{d}_{t}")], f"c{d}_{t}")
        h = e("Mul", [o, e("Tanh", [c], f"tC{d}_{t}")], f"h{d}_{t}")
        hs[t] = h
    return [hs[t] for t in range(steps)], h, c


def rewrite_lstm(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    steps, batch, hidden = _check(node, shapes.get(node.input[0]) if hasattr(shapes, "get") else None)
    direction = attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    e = _Emit(model, namer, node.name or node.output[0])
    ins = list(node.input) + [""] * (8 - len(node.input))
    dirs = [(0, direction == "reverse")] if direction != "bidirectional" else [(0, False), (1, True)]
    runs = [_direction(e, ins, d, steps, batch, hidden, rev) for d, rev in dirs]
    ax = {k: e.const(f"axes{k}", np.array([k], np.int64)) for k in (0, 1)}
    if node.output[0]:
        per_t = [e("Concat", [e("Unsqueeze", [r[0][t], ax[0]], f"y{d}_{t}") for (d, _), r in zip(dirs, runs)],
                   f"yt{t}", axis=0) for t in range(steps)]  # [dirs, N, H] each
        e.nodes.append(helper.make_node("Concat", [e("Unsqueeze", [y, ax[0]], f"yu{t}") for t, y in enumerate(per_t)],
                                        [node.output[0]], name=e.namer(f"{e.tag}/Y"), axis=0))
    for k, out in ((1, node.output[1] if len(node.output) > 1 else ""), (2, node.output[2] if len(node.output) > 2
                                                                              else "")):
        if out:
            parts = [e("Unsqueeze", [r[k], ax[0]], f"last{k}_{d}") for (d, _), r in zip(dirs, runs)]
            e.nodes.append(helper.make_node("Concat", parts, [out], name=e.namer(f"{e.tag}/last{k}"), axis=0))
    return e.nodes, f"{direction}, unrolled over {steps} steps into MatMul/Sigmoid/Tanh"
