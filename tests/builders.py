"""Tiny seeded models, and the checks that run them, for every test directory (one module, imported
by name through pytest's ``pythonpath = ["tests"]``; not a test module itself).

Builders: :func:`build_conv_model` (Conv → BN → Relu), :func:`build_gemm_model`, the Conv-BN-Relu-GAP-Gemm
classifiers :func:`build_small_cnn` (train CLI tests), :func:`classifier` (pipeline tests) and :func:`cnn`
(training tests: any number of blocks), and :class:`Builder` for graphs written node by node (the fold
tests). Each draws its weights from its own seed in a fixed order, so a test's numbers never move.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsq.model_io import IR_FOR_OPSET


def build_conv_model(*, opset: int = 13, ir_version: int | None = None, cin: int = 3, cout: int = 4, k: int = 3,
                     hw: int = 8, group: int = 1, bias: bool = True, bn: bool = True, relu: bool = True,
                     dynamic_batch: bool = True, seed: int = 0, dtype=np.float32) -> onnx.ModelProto:
    """Conv (→ BN) (→ Relu) on an N×cin×hw×hw input, named nodes, explicit IR version."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.standard_normal((cout, cin // group, k, k)) * 0.5).astype(dtype)
    inits = [numpy_helper.from_array(w, "conv.weight")]
    ins = ["input", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(dtype), "conv.bias"))
        ins.append("conv.bias")
    nodes = [helper.make_node("Conv", ins, ["conv_out"], name="conv", kernel_shape=[k, k],
                              pads=[k // 2] * 4, group=group)]
    last = "conv_out"
    if bn:
        params = {
            "bn.scale": rng.uniform(0.5, 1.5, cout), "bn.bias": rng.normal(0, 0.2, cout),
            "bn.mean": rng.normal(0, 0.3, cout), "bn.var": rng.uniform(0.5, 2.0, cout),
        }
        inits += [numpy_helper.from_array(v.astype(dtype), n) for n, v in params.items()]
        nodes.append(helper.make_node("BatchNormalization", [last, *params], ["bn_out"], name="bn", epsilon=1e-5))
        last = "bn_out"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["output"], name="relu"))
    else:
        nodes[-1].output[0] = "output"
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "conv_model",
        [helper.make_tensor_value_info("input", elem, [batch, cin, hw, hw])],
        [helper.make_tensor_value_info("output", elem, [batch, cout, hw, hw])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxsq-tests")
    model.ir_version = ir_version if ir_version is not None else IR_FOR_OPSET[opset]
    return model


def build_gemm_model(
    *, n_in: int = 6, n_out: int = 3, trans_b: int = 1, seed: int = 0, opset: int = 13
) -> onnx.ModelProto:
    """Gemm (+ bias) on an N×n_in input."""
    rng = np.random.default_rng(seed)
    shape = (n_out, n_in) if trans_b else (n_in, n_out)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "fc.bias")]
    node = helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["output"], name="fc", transB=trans_b)
    graph = helper.make_graph([node], "gemm_model",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxsq-tests")
    model.ir_version = IR_FOR_OPSET[opset]
    return model


def build_small_cnn(rng: np.random.Generator, *, bn: bool = False) -> onnx.ModelProto:
    """x N×1×6×6 → Conv(8, 3×3, pad 1, no bias) (→ BN at identity) → Relu → GlobalAveragePool → Flatten →
    Gemm → y N×4; opset 13, IR 7. Draws the conv then the fc weight from ``rng`` (callers may go on
    drawing their data from it)."""
    return conv_classifier((8,), classes=4, size=6, seed=rng, conv_scale=0.5, fc_scale=0.3,
                           bn="identity" if bn else None, names="plain", io=("x", "y"), graph_name="m",
                           producer="", check=False)


CLASSES = 3


def classifier(seed: int = 0, cin: int = 4, hw: int = 6, cout: int = 32) -> onnx.ModelProto:
    """input N×cin×hw×hw → Conv(cout, 3×3, pad 1, bias) → BN (random statistics) → Relu → GlobalAveragePool
    → Flatten → Gemm → 3 logits (the pipeline tests). cout = 32 makes the conv eligible for the original's
    threshold rule (no >= 32)."""
    return conv_classifier((cout,), classes=CLASSES, in_ch=cin, size=hw, seed=seed, conv_scale=0.3,
                           conv_bias=True, bn="random", fc_scale=0.3, names="plain", graph_name="tiny_classifier",
                           producer="onnxsq-tests", check=False)


def cnn(channels: tuple[int, ...] = (8, 16), *, classes: int = 10, in_ch: int = 1, size: int = 8, seed: int = 0,
        opset: int = 13, ir: int = 7, batch: int | str = "N") -> onnx.ModelProto:
    """conv-BN-ReLU blocks → GlobalAveragePool → Flatten → Gemm, He-initialised, BN at identity (the
    training tests)."""
    return conv_classifier(channels, classes=classes, in_ch=in_ch, size=size, seed=seed, opset=opset, ir=ir,
                           batch=batch)


def conv_classifier(channels: tuple[int, ...] = (8, 16), *, classes: int = 10, in_ch: int = 1, size: int = 8,
                    seed: int | np.random.Generator = 0, opset: int = 13, ir: int = 7, batch: int | str = "N",
                    conv_scale: float | None = None, conv_bias: bool = False, bn: str | None = "identity",
                    fc_scale: float | None = None, strides: tuple[int, ...] | None = None,
                    names: str = "indexed", io: tuple[str, str] = ("input", "logits"), graph_name: str = "tiny_cnn",
                    producer: str = "test", check: bool = True) -> onnx.ModelProto:
    """The one Conv-BN-Relu-GAP-Gemm classifier: ``channels`` conv blocks (3×3, pad 1) → GlobalAveragePool
    → Flatten → Gemm(``classes``).

    Weights are drawn from ``seed`` (or a Generator, which callers may go on drawing from) in a fixed
    order: per block the conv weight (``conv_scale`` × N(0, 1), He by default), its bias (``conv_bias``,
    N(0, 0.1)), the BN parameters when ``bn="random"`` (scale U(0.5, 1.5), bias N(0, 0.2), mean N(0, 0.3),
    var U(0.5, 2)); then the fc weight (``fc_scale`` × N(0, 1), 1/sqrt(fan-in) by default); biases of fc
    are zero, ``bn="identity"`` is BN at identity, ``bn=None`` no BN. ``names="indexed"`` names block i's
    tensors conv{i}.weight, bn{i}.*, c{i}/b{i}/r{i}; ``"plain"`` (one block) conv.weight, bn.*, c/b/r/g/f.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    plain = names == "plain"
    x_name, y_name = io
    nodes, inits = [], []
    x, cin = x_name, in_ch
    for i, c in enumerate(channels):
        tag = "" if plain else str(i)
        scale = np.sqrt(2.0 / (cin * 9)) if conv_scale is None else conv_scale
        inits.append(numpy_helper.from_array((rng.standard_normal((c, cin, 3, 3)) * scale).astype(np.float32),
                                             f"conv{tag}.weight"))
        conv_in = [x, f"conv{tag}.weight"]
        if conv_bias:
            inits.append(numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"conv{tag}.bias"))
            conv_in.append(f"conv{tag}.bias")
        attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
        if strides is not None:
            attrs["strides"] = [strides[i]] * 2
        nodes.append(helper.make_node("Conv", conv_in, [f"c{tag}"], name=f"conv{tag}", **attrs))
        last = f"c{tag}"
        if bn is not None:
            params = ((("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", np.zeros(c)), ("var", np.ones(c)))
                      if bn == "identity" else
                      (("scale", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.2, c)),
                       ("mean", rng.normal(0, 0.3, c)), ("var", rng.uniform(0.5, 2.0, c))))
            bn_t = [numpy_helper.from_array(v.astype(np.float32), f"bn{tag}.{k}") for k, v in params]
            inits += bn_t
            nodes.append(helper.make_node("BatchNormalization", [last, *[t.name for t in bn_t]], [f"b{tag}"],
                                          name=f"bn{tag}"))
            last = f"b{tag}"
        nodes.append(helper.make_node("Relu", [last], [f"r{tag}"], name=f"relu{tag}"))
        x, cin = f"r{tag}", c
    fc = rng.standard_normal((classes, cin)) * (np.sqrt(1.0 / cin) if fc_scale is None else fc_scale)
    inits += [numpy_helper.from_array(fc.astype(np.float32), "fc.weight"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    gap, flat = ("g", "f") if plain else ("gap", "flat")
    nodes += [helper.make_node("GlobalAveragePool", [x], [gap], name="gap"),
              helper.make_node("Flatten", [gap], [flat], name="flatten"),
              helper.make_node("Gemm", [flat, "fc.weight", "fc.bias"], [y_name], name="fc", transB=1)]
    graph = helper.make_graph(nodes, graph_name,
                              [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, [batch, in_ch, size, size])],
                              [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    model.ir_version = ir
    if check:
        onnx.checker.check_model(model)
    return model


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


def model_feeds(model: onnx.ModelProto, n: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """``n`` seeded standard-normal float32 feeds for ``model``'s first input (dynamic dims as 1)."""
    x = model.graph.input[0]
    shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [{x.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def ort_optimized_graph(model: onnx.ModelProto, tmp_path, tag: str) -> onnx.GraphProto:
    """The graph onnxruntime runs for ``model`` (all optimizations), as it saves it (under ``tmp_path``)."""
    import onnxruntime as ort

    path, opt = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.opt.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.optimized_model_filepath, so.log_severity_level = str(opt), 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(opt)).graph


def relu_net_peaking(top: float = 2.1, pool: bool = True) -> onnx.ModelProto:
    """x → Conv → Relu [→ MaxPool] → Conv → Relu → Conv, the first Relu's range just above 2 (``top``)."""
    b = Builder(5)
    y = b.node("Relu", [b.conv("x", 3, 8)])
    if pool:
        y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Relu", [b.conv(y, 8, 8)])
    m = b.model({"x": [1, 3, 8, 8]}, [b.conv(y, 8, 4)])
    first = next(n for n in m.graph.node if n.op_type == "Conv")
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    relu = next(n for n in m.graph.node if n.op_type == "Relu").output[0]
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(relu))
    peak = max(float(run(probe, feeds_for([1, 3, 8, 8], seed=s))[1].max()) for s in range(4))
    for init in m.graph.initializer:  # the first layer scaled so that its output peaks at `top`
        if init.name in first.input[1:]:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * (top / peak), init.name))
    return m


def shift5_feed(seed: int) -> dict[str, np.ndarray]:
    """Inputs on the grid of shift 5 within its range: their own quantization is exact, so the layers' is seen."""
    return {"x": np.clip(np.rint(feeds_for([1, 3, 8, 8], seed=seed)["x"] * 32) / 32, -3.9, 3.9).astype(np.float32)}


def se_head_classifier(seed: int = 0, classes: int = 5) -> onnx.ModelProto:
    """x 1×3×8×8 → Conv(8) → Relu → squeeze-excitation (GlobalAveragePool → Conv 1×1 → Relu → Conv 1×1 →
    Sigmoid → Mul with the feature map) → GlobalAveragePool → Flatten → Gemm → ``logits``, and Softmax →
    ``probs``: a pooled head beside a pooled branch that gates the feature map (the .pooled tests)."""
    b = Builder(seed)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    s = b.node("GlobalAveragePool", [r])
    s = b.node("Relu", [b.node("Conv", [s, b.const("w", b.weight((4, 8, 1, 1), 8)), b.const("b", np.zeros(4))])])
    s = b.node("Sigmoid", [b.node("Conv", [s, b.const("w", b.weight((8, 4, 1, 1), 4)), b.const("b", np.ones(8))])])
    gated = b.node("Mul", [r, s])
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [gated])])
    fc = b.const("fc", b.weight((classes, 8), 8) * 3)
    b.nodes.append(helper.make_node("Gemm", [flat, fc, b.const("fcb", b.rng.normal(0, 0.5, classes))], ["logits"],
                                    name="fc", transB=1))
    b.nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    return b.model({"x": [1, 3, 8, 8]}, ["logits", "probs"])


def decoded_detector_head(seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style decoded head on two levels (x 1×3×8×8 and its 2×2 max-pool): per level a box Conv(4)
    and a class Conv(3) (biased to negative logits), each reshaped to [1, C, HW] and concatenated over the
    levels; boxes times 100 (pixels), classes through one Sigmoid; ``y`` = Concat(boxes, scores) [1, 7, 80]:
    the output Concat of very different ranges, and score logits that reach their Sigmoid through moves."""
    b = Builder(seed)
    x2 = b.node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])
    boxes, logits = [], []
    for src, hw in (("x", 64), (x2, 16)):
        shape = b.const("shape", np.array([1, -1, hw]), np.int64)
        boxes.append(b.node("Reshape", [b.conv(src, 3, 4), shape]))
        cls = b.node("Conv", [src, b.const("w", b.weight((3, 3, 3, 3), 27)), b.const("b", np.full(3, -3.0))],
                     kernel_shape=[3, 3], pads=[1] * 4)
        logits.append(b.node("Reshape", [cls, shape]))
    box = b.node("Mul", [b.node("Concat", boxes, axis=2), b.const("stride", np.array(100.0))])
    scores = b.node("Sigmoid", [b.node("Concat", logits, axis=2)])
    b.nodes.append(helper.make_node("Concat", [box, scores], ["y"], name="head", axis=1))
    return b.model({"x": [1, 3, 8, 8]}, ["y"])


def activation_chain(act: str, seed: int = 0, layers: int = 3) -> onnx.ModelProto:
    """``layers`` Convs (x 1×3×8×8, 8 channels) each followed by ``act`` (the last one's output is ``y``):
    ``silu`` (x * Sigmoid(x)), ``hswish`` (x * HardSigmoid(x)), ``HardSwish`` (the op, opset 14), ``prelu``
    (a constant per-channel slope), ``leaky`` (LeakyRelu 0.1), ``sigmoid``, ``relu``."""
    b = Builder(seed)
    x, cin = "x", 3
    for _ in range(layers):
        t = b.conv(x, cin, 8)
        if act in ("silu", "hswish"):
            gate = b.node("Sigmoid", [t]) if act == "silu" else b.node("HardSigmoid", [t], alpha=1 / 6, beta=0.5)
            x = b.node("Mul", [t, gate])
        elif act == "prelu":
            x = b.node("PRelu", [t, b.const("slope", b.rng.uniform(0.05, 0.3, (8, 1, 1)))])
        elif act == "leaky":
            x = b.node("LeakyRelu", [t], alpha=0.1)
        else:
            x = b.node({"HardSwish": "HardSwish", "sigmoid": "Sigmoid", "relu": "Relu"}[act], [t])
        cin = 8
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    return b.model({"x": [1, 3, 8, 8]}, ["y"], opset=14 if act == "HardSwish" else 13)


def layernorm_block(seed: int = 0, tokens: int = 12, width: int = 16) -> onnx.ModelProto:
    """x [1, tokens, width] -> MatMul + bias -> LayerNormalization (last axis, epsilon 1e-3) -> MatMul + bias: a
    transformer MLP's shape, opset 17."""
    b = Builder(seed)
    h = b.node("Add", [b.node("MatMul", ["x", b.const("w", b.weight((width, width), width))]),
                       b.const("b", b.rng.normal(0, 0.3, width))])
    ln = b.node("LayerNormalization", [h, b.const("gamma", b.rng.uniform(0.8, 2.4, width)),
                                       b.const("beta", b.rng.normal(0, 0.2, width))], axis=-1, epsilon=1e-3)
    y = b.node("Add", [b.node("MatMul", [ln, b.const("w", b.weight((width, 8), width))]),
                       b.const("b", b.rng.normal(0, 0.1, 8))])
    return b.model({"x": [1, tokens, width]}, [y], opset=17)
