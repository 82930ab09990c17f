"""A seeded ResNet-50-sized float32 ONNX model, built with onnx.helper (no download, no torch).

Shared by the benchmarks (``bench_optimize.py``, threshold and quantize benchmarks):
``build_resnet50(seed=0, opset=13)`` returns the standard ResNet-50 v1.5 topology — a 7×7 stem,
bottleneck stages of 3/4/6/3 blocks, global average pooling and a 1000-way Gemm — with every Conv
followed by an eval-mode BatchNormalization (53 BN nodes, ~25.6 M parameters). Convs carry no bias,
as exported from PyTorch. Weights are He-initialised and the BN statistics are random but realistic,
so activations stay in a sane range through the 50 layers and output errors are meaningful.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = ("N", 3, 224, 224)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (bottleneck width, blocks, first stride)
EXPANSION = 4


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def init(self, name: str, values: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(values, dtype=np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True,
                gamma: tuple[float, float] = (0.5, 1.5)) -> str:
        name = self._name("conv")
        fan_in = cin * k * k
        w = self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.init(f"{name}.weight", w)
        pad = k // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight"], [f"{name}.out"], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1], group=1))
        bn = name.replace("conv", "bn")
        self.init(f"{bn}.scale", self.rng.uniform(*gamma, cout))
        self.init(f"{bn}.bias", self.rng.normal(0.0, 0.1, cout))
        self.init(f"{bn}.mean", self.rng.normal(0.0, 0.1, cout))
        self.init(f"{bn}.var", self.rng.uniform(0.5, 1.5, cout))
        self.nodes.append(helper.make_node(
            "BatchNormalization",
            [f"{name}.out", f"{bn}.scale", f"{bn}.bias", f"{bn}.mean", f"{bn}.var"],
            [f"{bn}.out"], name=bn, epsilon=1e-5, momentum=0.9))
        out = f"{bn}.out"
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{bn}.relu"], name=f"{bn}_relu"))
            out = f"{bn}.relu"
        return out

    def bottleneck(self, x: str, cin: int, width: int, stride: int) -> str:
        cout = width * EXPANSION
        y = self.conv_bn(x, cin, width, 1)
        y = self.conv_bn(y, width, width, 3, stride)  # stride on the 3x3 (ResNet v1.5)
        # a small gamma on the residual branch keeps activations bounded through 16 blocks
        y = self.conv_bn(y, width, cout, 1, relu=False, gamma=(0.1, 0.4))
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv_bn(x, cin, cout, 1, stride, relu=False)
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}.out"], name=name))
        self.nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}_relu"))
        return f"{name}.relu"


def build_resnet50(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """A ResNet-50-sized float32 model: input ``input`` [N,3,224,224], output ``logits`` [N,1000].

    Deterministic for a given ``seed``; ``opset`` is the default-domain opset (BatchNormalization is
    emitted in the form valid from opset 9 on: one output, no ``spatial``/``training_mode``).
    """
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, 2)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool1"], name="pool1",
                                    kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool1", 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            x = b.bottleneck(x, cin, width, stride if i == 0 else 1)
            cin = width * EXPANSION
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    fc_w = b.rng.standard_normal((1000, cin), dtype=np.float32) * np.float32(np.sqrt(1.0 / cin))
    b.init("fc.weight", fc_w)
    b.init("fc.bias", b.rng.normal(0.0, 0.01, 1000))
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=b.inits,
    )
    ir = 7 if opset <= 12 else 8 if opset <= 18 else 9 if opset <= 20 else 10
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir,
                              producer_name="onnxsq-bench")
    return model


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


if __name__ == "__main__":  # pragma: no cover - a quick look at the model
    import time

    t0 = time.perf_counter()
    m = build_resnet50()
    onnx.checker.check_model(m)
    bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    print(f"built in {time.perf_counter() - t0:.2f}s: {parameter_count(m) / 1e6:.2f} M parameters "
          f"(BN statistics included), {bn} BatchNormalization nodes, {m.ByteSize() / 2**20:.1f} MiB")
