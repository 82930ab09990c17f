"""Seeded generator of the small sample models committed beside this script.

    python sample_models/generate.py [--out DIR] [--only NAME ...]

Built by hand with onnx.helper (no torch needed):
  jacintonet_seg.onnx (opset 11), jacintonet_seg_op17.onnx
      A scaled-down JacintoNet11 + JSegNet-style decoder: conv-BN-ReLU blocks with grouped convs and
      strides, a dilated grouped conv, a grouped ConvTranspose → BN → ReLU upsampling (×2), a skip
      Add, per-pixel logits upsampled ×8 by a linear Resize. Input N×3×64×64, output N×5×64×64.
  digits_cnn.onnx (opset 13)
      A small CNN for the 8×8 UCI digits: N×1×8×8 → 3 × conv-BN-ReLU (MaxPool after the second) →
      GlobalAveragePool → Flatten → Gemm → 10 logits. Only ops with CPU gradients in
      onnxruntime-training, so it can be trained as is.
Exported from PyTorch (skipped with a message when torch is missing):
  small_cls_torch_op11.onnx, small_cls_torch.onnx (opset 13), small_cls_torch_op17.onnx
      A small classifier N×3×32×32 → 10 logits: bias-free conv-BN, depthwise conv-BN, a residual
      1×1 branch, ConvTranspose → BN, Linear → BatchNorm1d. BN statistics come from a few random
      batches in train mode, then it is exported in eval mode with the BN nodes kept.

Every model has names on all nodes, an explicit IR version that onnxruntime 1.19 loads (≤ 10), and
passes onnx.checker. The output is deterministic: the same bytes on every run (for the hand-built
models, also across onnx versions; the torch exports depend on the torch version).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
# The oldest IR version that can carry each opset: what the ONNX release introducing it wrote.
IR_FOR_OPSET = {11: 6, 13: 7, 17: 8}
PRODUCER = "onnxsq-sample-models"


class _Builder:
    """Collects nodes and initializers; every node gets a unique, readable name."""

    def __init__(self, seed: int, opset: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, values: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def kaiming(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bn(self, x: str, c: int, name: str) -> str:
        # Statistics as after training: means around 0, variances around 1, gamma near 1.
        gamma = self.rng.uniform(0.6, 1.4, c).astype(np.float32)
        beta = self.rng.normal(0.0, 0.2, c).astype(np.float32)
        mean = self.rng.normal(0.0, 0.3, c).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        ins = [self.init(f"{name}.{p}", v) for p, v in
               (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", [x, *ins], name, epsilon=1e-5)

    def conv(self, x: str, cin: int, cout: int, k: int, name: str, *, stride: int = 1, group: int = 1,
             dilation: int = 1, bias: bool = False, bn: bool = True, relu: bool = True) -> str:
        w = self.init(f"{name}.weight", self.kaiming((cout, cin // group, k, k), cin // group * k * k))
        ins = [x, w]
        if bias:
            ins.append(self.init(f"{name}.bias", self.rng.normal(0, 0.05, cout).astype(np.float32)))
        pad = dilation * (k - 1) // 2
        y = self.node("Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                      dilations=[dilation, dilation], group=group)
        if bn:
            y = self.bn(y, cout, f"{name}_bn")
        if relu:
            y = self.node("Relu", [y], f"{name}_relu")
        return y

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name=PRODUCER, producer_version="1")
        model.ir_version = IR_FOR_OPSET[self.opset]
        return model


def jacintonet_seg(opset: int, seed: int = 11, classes: int = 5) -> onnx.ModelProto:
    """JacintoNet11-style encoder (conv-BN-ReLU, grouped convs, strides) + JSegNet-style decoder."""
    b = _Builder(seed, opset)
    x = b.conv("input", 3, 16, 5, "conv1a", stride=2)  # 32×32
    x = b.conv(x, 16, 16, 3, "conv1b", group=4)
    x = b.node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])  # 16×16
    x = b.conv(x, 16, 32, 3, "res2a", bias=True)
    x = b.conv(x, 32, 32, 3, "res2b", group=4)
    x = b.node("MaxPool", [x], "pool2", kernel_shape=[2, 2], strides=[2, 2])  # 8×8
    x = b.conv(x, 32, 64, 3, "res3a")
    out3 = b.conv(x, 64, 64, 3, "res3b", group=4)
    x = b.conv(out3, 64, 64, 3, "res4a", stride=2)  # 4×4
    x = b.conv(x, 64, 64, 3, "res4b", group=4)
    x = b.conv(x, 64, 32, 3, "out5a", group=2, dilation=2)
    # ×2 learned upsampling: a grouped ConvTranspose (output channels on weight axis 1, per group).
    up_w = b.init("out5a_up.weight", b.kaiming((32, 32 // 8, 4, 4), 4 * 4 * 4))
    x = b.node("ConvTranspose", [x, up_w], "out5a_up", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1],
               group=8)  # 8×8
    x = b.bn(x, 32, "out5a_up_bn")
    x = b.node("Relu", [x], "out5a_up_relu")
    skip = b.conv(out3, 64, 32, 3, "out3a", group=2)
    x = b.node("Add", [x, skip], "out3_out5_combined")
    x = b.conv(x, 32, 32, 3, "ctx_conv1")
    x = b.conv(x, 32, 32, 3, "ctx_conv2", group=4, dilation=2)
    logits = b.conv(x, 32, classes, 3, "ctx_final", bias=True, bn=False, relu=False)
    # ×8 bilinear upsampling to the input resolution.
    scales = b.init("upsample.scales", np.array([1, 1, 8, 8], np.float32))
    roi = b.init("upsample.roi", np.zeros(0, np.float32)) if opset < 13 else ""
    b.node("Resize", [logits, roi, scales], "upsample", mode="linear",
           coordinate_transformation_mode="half_pixel")
    b.nodes[-1].output[0] = "logits"
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, 64, 64])
    return b.model("jacintonet_seg", [inp], [out],
                   f"JacintoNet-style segmentation sample (seed {seed}, {classes} classes, opset {opset})")


def digits_cnn(seed: int = 13) -> onnx.ModelProto:
    """A small CNN for the 8×8 UCI digits, trainable by onnxruntime-training on CPU."""
    b = _Builder(seed, 13)
    x = b.conv("input", 1, 16, 3, "conv1")
    x = b.conv(x, 16, 32, 3, "conv2")
    x = b.node("MaxPool", [x], "pool2", kernel_shape=[2, 2], strides=[2, 2])  # 4×4
    x = b.conv(x, 32, 32, 3, "conv3")
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flatten", axis=1)
    w = b.init("fc.weight", (b.rng.standard_normal((10, 32)) / np.sqrt(32)).astype(np.float32))
    bias = b.init("fc.bias", np.zeros(10, np.float32))
    b.node("Gemm", [x, w, bias], "fc", transB=1)
    b.nodes[-1].output[0] = "logits"
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    return b.model("digits_cnn", [inp], [out], f"8x8 digits classifier sample (seed {seed}, untrained)")


def small_cls_torch(opset: int, seed: int = 17) -> onnx.ModelProto:
    """A small classifier exported from PyTorch in eval mode with non-trivial BN statistics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class SmallCls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU())
            self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
            self.shortcut = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
            self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            x = self.stem(x)
            x = self.dw(x)
            x = torch.relu(self.pw(x) + self.shortcut(x))
            x = self.up(self.conv3(self.pool(x)))
            x = torch.flatten(torch.mean(x, dim=(2, 3)), 1)
            return self.head(x)

    net = SmallCls()
    # Random BN affine parameters and running statistics from a few train-mode batches, so folding
    # BN into its neighbours is a real (non-identity) transformation.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.6, 1.4)
                m.bias.normal_(0.0, 0.2)
        net.train()
        for _ in range(4):
            net(torch.randn(8, 3, 32, 32) * 2.0 + 0.5)
    net.eval()
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the TorchScript exporter
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buf, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          # PRESERVE keeps the BN nodes (EVAL would fold them into the convs).
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, IR_FOR_OPSET[opset])
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    model.graph.doc_string = f"small classifier exported from PyTorch (seed {seed}, opset {opset})"
    return model


HAND_BUILT: dict[str, Callable[[], onnx.ModelProto]] = {
    "jacintonet_seg": lambda: jacintonet_seg(11),
    "jacintonet_seg_op17": lambda: jacintonet_seg(17),
    "digits_cnn": digits_cnn,
}
TORCH_EXPORTED: dict[str, Callable[[], onnx.ModelProto]] = {
    "small_cls_torch_op11": lambda: small_cls_torch(11),
    "small_cls_torch": lambda: small_cls_torch(13),
    "small_cls_torch_op17": lambda: small_cls_torch(17),
}
ALL = {**HAND_BUILT, **TORCH_EXPORTED}


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build(name: str) -> bytes:
    """The serialized model ``name`` (checked by onnx.checker)."""
    model = ALL[name]()
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def generate(out: Path, names: list[str] | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Write the models ``names`` (default: all that this environment can build) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(ALL):
        if name in TORCH_EXPORTED and not have_torch():
            log(f"skip {name}: torch is not installed (use the .venv environment)")
            continue
        path = out / f"{name}.onnx"
        path.write_bytes(build(name))
        written.append(path)
        log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output directory [default: sample_models/]")
    ap.add_argument("--only", nargs="+", choices=sorted(ALL), help="build only these models")
    args = ap.parse_args(argv)
    generate(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
