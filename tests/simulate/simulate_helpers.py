"""Shared by the simulate tests: the sample models' input shapes and seeded random feeds (a module
of its own, uniquely named: ``conftest`` is not importable by name once several test folders have one)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLES = {"digits_cnn": (1, 8, 8), "jacintonet_seg": (3, 64, 64), "small_cls_torch": (3, 32, 32),
           "small_cls_torch_op17": (3, 32, 32), "jacintonet_seg_op17": (3, 64, 64)}


def random_feeds(model: onnx.ModelProto, shape: tuple[int, ...], count: int, seed: int, batch: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    return [{name: rng.standard_normal((batch, *shape)).astype(np.float32)} for _ in range(count)]


class G:
    """A tiny QDQ graph builder: ``q(x, shift, signed)`` quantizes a float tensor, ``dq(t)`` reads it."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def q(self, x: str, shift: int, signed: bool = True) -> str:
        scale = self.const(np.float32(2.0 ** -shift), "s")
        zp = self.const(np.int8(0) if signed else np.uint8(0), "z")
        q = self.node("QuantizeLinear", [x, scale, zp])
        return self.node("DequantizeLinear", [q, scale, zp])

    def w(self, values: np.ndarray, shift, axis: int = 0, dtype=np.int8) -> str:
        shift = np.asarray(shift)
        scale = self.const((2.0 ** -shift).astype(np.float32), "ws")
        zp = self.const(np.zeros(shift.shape, dtype), "wz")
        return self.node("DequantizeLinear", [self.const(values.astype(dtype), "w"), scale, zp],
                         **({"axis": axis} if shift.ndim else {}))

    def model(self, x_shape, out: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 7
        return m
