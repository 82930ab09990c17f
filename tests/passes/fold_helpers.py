"""Tiny seeded models and checks shared by the fold-batchnorm tests (not a test module itself)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NP_TO_ONNX = {np.float16: TensorProto.FLOAT16, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


class Builder:
    """Collects nodes and initializers; ``const`` puts a value in an initializer or a Constant node."""

    def __init__(self, seed: int = 0, dtype=np.float32, constant_nodes: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.constant_nodes = constant_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, prefix: str, value: np.ndarray, dtype=None) -> str:
        name = self.name(prefix)
        arr = np.asarray(value, dtype=dtype or self.dtype)
        if self.constant_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(f"{op.lower()}_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op.lower()), **attrs))
        return outs[0] if n_out == 1 else outs

    def bn(self, x: str, channels: int, *, eps: float = 1e-5, param_dtype=None, n_out: int = 1,
           zero_shift: bool = False, **attrs) -> str | list[str]:
        gamma = self.rng.uniform(0.5, 1.5, channels)
        var = self.rng.uniform(0.5, 2.0, channels)
        # zero_shift: beta = mean = 0 makes the BN shift exactly zero in any float type
        mean = np.zeros(channels) if zero_shift else self.rng.normal(0, 0.5, channels)
        beta = np.zeros(channels) if zero_shift else self.rng.normal(0, 0.5, channels)
        ins = [x] + [self.const(p, v, param_dtype) for p, v in
                     (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", ins, n_out=n_out, epsilon=eps, **attrs)

    def conv(self, x: str, cin: int, cout: int, *, kernel: int = 3, group: int = 1, bias: bool = True,
             op: str = "Conv", **attrs) -> str:
        """A 2-D Conv (or ConvTranspose, weight [cin, cout/group, k, k]) with seeded weights, padding 1."""
        shape = (cin, cout // group) if op == "ConvTranspose" else (cout, cin // group)
        w = self.const("w", self.weight(shape + (kernel, kernel), cin // group * kernel**2))
        ins = [x, w] + ([self.const("b", self.rng.normal(0, 1, cout))] if bias else [])
        return self.node(op, ins, group=group, kernel_shape=[kernel, kernel], pads=[1] * 4, **attrs)

    def const_op(self, op: str, y: str, value: np.ndarray, *, const_first: bool = False) -> str:
        """``op(y, c)`` (``op(c, y)`` with ``const_first``) with ``value`` in this builder's dtype."""
        c = self.const("c", value)
        return self.node(op, [c, y] if const_first else [y, c])

    def model(self, inputs: dict[str, list], outputs: list[str], opset: int = 13,
              out_shapes: dict[str, list] | None = None) -> onnx.ModelProto:
        et = NP_TO_ONNX[self.dtype]
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(k, et, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, et, (out_shapes or {}).get(o)) for o in outputs],
            initializer=self.inits)
        ir = 7 if opset <= 12 else 8 if opset <= 18 else 9
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
        # newer onnx checkers want output shapes: take them from shape inference
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
        for out in model.graph.output:
            if not out.type.tensor_type.HasField("shape") and inferred[out.name].type.tensor_type.HasField("shape"):
                out.type.CopyFrom(inferred[out.name].type)
        onnx.checker.check_model(model)
        return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs from onnxruntime with graph optimizations off, or from onnx's reference evaluator for
    float64 Conv/ConvTranspose, which onnxruntime's CPU provider does not implement."""
    ops = {n.op_type for n in model.graph.node}
    if any(v.dtype == np.float64 for v in feeds.values()) and ops & {"Conv", "ConvTranspose"}:
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(model, new_ops=[_eval_bn()]).run(None, feeds)]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _eval_bn():
    """An eval-mode BatchNormalization for onnx's reference evaluator, whose own kernel normalizes
    with batch statistics for a one-output BN (checked against onnxruntime and numpy)."""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=None, training_mode=None, spatial=None):
            shape = (-1,) + (1,) * (x.ndim - 2)
            s = scale.reshape(shape) / np.sqrt(var.reshape(shape) + (1e-5 if epsilon is None else epsilon))
            return ((x - mean.reshape(shape)) * s + bias.reshape(shape)).astype(x.dtype),

    return BatchNormalization


def tolerances(dtype) -> tuple[float, float]:
    return {np.float16: (1e-2, 1e-2), np.float32: (1e-4, 1e-5), np.float64: (1e-9, 1e-10)}[dtype]


def assert_equivalent(original: onnx.ModelProto, folded: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      dtype=np.float32) -> None:
    rtol, atol = tolerances(dtype)
    ref, got = run(original, feeds), run(folded, feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and g.dtype == r.dtype
        # float16 rounds at ~1e-3 of the output's scale, so its atol is relative to that scale
        scale = float(np.abs(r.astype(np.float64)).max()) if dtype == np.float16 else 1.0
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=rtol, atol=atol * max(scale, 1.0))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def feeds_for(shape: list[int], dtype=np.float32, seed: int = 1, name: str = "x") -> dict[str, np.ndarray]:
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}
