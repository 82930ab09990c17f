"""Reference architectures in plain torch, exported to ONNX for the zoo (needs torch; ``.venv`` has it).

torchvision does not load here, so the blocks are written out: a MobileNetV3 stage (HardSwish, a
HardSigmoid squeeze-excite), a ResNet basic-block net, an LR-ASPP segmentation head (bilinear Resize), and
a ConvTranspose encoder-decoder. Weights are random with a fixed seed; every BatchNorm gets random
running statistics and affine parameters, so folding it is a real test (identity BNs fold trivially).

Exported by the legacy TorchScript exporter (``dynamo=False``: the new one needs onnxscript, which is not
installed), opset 17, IR version 8, batch dimension dynamic (``N``), in ``TrainingMode.PRESERVE`` on an
eval-mode module so the BatchNormalization nodes stay in the graph (``TrainingMode.EVAL`` fuses them
into the convolutions before they reach ONNX).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 17
IR_VERSION = 8
SEED = 0


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU,
             bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- MobileNetV3 ------------------------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: global average pool → 1×1 reduce → ReLU → 1×1 expand → HardSigmoid → scale."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.gate(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """1×1 expand (BN, HardSwish) → k×k depthwise (BN, HardSwish) → SE → 1×1 project (BN) (+ residual)."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, se: bool = True) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, expand, 1, act=nn.Hardswish)
        self.dw = _conv_bn(expand, expand, k, stride, groups=expand, act=nn.Hardswish)
        self.se = SqueezeExcite(expand, max(8, expand // 4)) if se else nn.Identity()
        self.project = _conv_bn(expand, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


class MobileNetV3Block(nn.Module):
    """A MobileNetV3-Small-like classifier: stem, three inverted residuals with SE, 1×1 head, GAP, MLP head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 64, 16, 3, 1),
            InvertedResidual(16, 72, 24, 5, 2),
            InvertedResidual(24, 96, 24, 3, 1),
        )
        self.head = _conv_bn(24, 96, 1, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- ResNet -----------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet's basic block: 3×3 conv-BN-ReLU, 3×3 conv-BN, + identity or 1×1 conv-BN shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, act=None)
        self.shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetBasic(nn.Module):
    """A small ResNet: 3×3 stem, max pool, three stages of basic blocks (16, 32, 64), GAP, fully connected."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32),
                                    BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- LR-ASPP ----------------------------------------------------------------------------------------

class LRASPPNet(nn.Module):
    """A MobileNetV3 backbone (low-level features at stride 4, high-level at stride 8) with the LR-ASPP head:
    high → 1×1 conv-BN-ReLU, gated by a sigmoid of its global average; bilinear-upsampled to the low-level
    size; plus a 1×1 classifier of the low-level features; bilinear-upsampled to the input size."""

    def __init__(self, num_classes: int = 5, inter: int = 32) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        self.low = nn.Sequential(InvertedResidual(16, 48, 24, 3, 2, se=False),
                                 InvertedResidual(24, 72, 24, 3, 1, se=False))
        self.high = nn.Sequential(InvertedResidual(24, 96, 40, 5, 2), InvertedResidual(40, 120, 40, 5, 1))
        self.cbr = _conv_bn(40, inter, 1)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(40, inter, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(24, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.low(self.stem(x))
        high = self.high(low)
        y = self.cbr(high) * self.scale(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


# --- ConvTranspose decoder --------------------------------------------------------------------------

class ConvTransposeDecoder(nn.Module):
    """An encoder-decoder: three stride-2 conv-BN-ReLU down, three ConvTranspose up (k4 s2 p1 with bias → BN;
    k3 s2 p1 output_padding 1, groups 2 → BN; k2 s2 to 3 channels), sigmoid: an image the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(_conv_bn(3, 16, 3, 2), _conv_bn(16, 32, 3, 2), _conv_bn(32, 64, 3, 2))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=True), nn.BatchNorm2d(32), nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1, groups=2, bias=False),
                                 nn.BatchNorm2d(16), nn.ReLU())
        self.up3 = nn.ConvTranspose2d(16, 3, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up3(self.up2(self.up1(self.enc(x)))))


# --- YOLOv8-style detector -------------------------------------------------------------------------

class C2f(nn.Module):
    """YOLOv8's C2f: 1×1 conv-BN-SiLU, split in two, bottlenecks (with residual) on the second half, concat of
    every part, 1×1 conv-BN-SiLU."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = _conv_bn(cin, 2 * self.c, 1, act=nn.SiLU)
        self.m = nn.ModuleList(nn.Sequential(_conv_bn(self.c, self.c, 3, act=nn.SiLU),
                                             _conv_bn(self.c, self.c, 3, act=nn.SiLU)) for _ in range(n))
        self.cv2 = _conv_bn((2 + n) * self.c, cout, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max pools, concat, 1×1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = _conv_bn(c, c // 2, 1, act=nn.SiLU)
        self.cv2 = _conv_bn(c * 2, c, 1, act=nn.SiLU)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class YoloV8Like(nn.Module):
    """A YOLOv8n-like detector at a quarter of its width: SiLU everywhere, C2f (Split/Concat), SPPF, nearest
    up-sampling and concat, two scales (strides 8, 16), DFL box decoding (Reshape, Softmax, a weighted sum)
    and sigmoid class scores; output ``[N, 4 + classes, anchors]``, as ultralytics exports it."""

    def __init__(self, classes: int = 3, reg_max: int = 8) -> None:
        super().__init__()
        self.reg = reg_max
        self.stem = nn.Sequential(_conv_bn(3, 8, 3, 2, act=nn.SiLU), _conv_bn(8, 16, 3, 2, act=nn.SiLU), C2f(16, 16))
        self.p3 = nn.Sequential(_conv_bn(16, 32, 3, 2, act=nn.SiLU), C2f(32, 32))
        self.p4 = nn.Sequential(_conv_bn(32, 64, 3, 2, act=nn.SiLU), C2f(64, 64), SPPF(64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = C2f(96, 32)
        self.box = nn.ModuleList(nn.Sequential(_conv_bn(c, 16, 3, act=nn.SiLU), nn.Conv2d(16, 4 * reg_max, 1))
                                 for c in (32, 64))
        self.cls = nn.ModuleList(nn.Sequential(_conv_bn(c, 16, 3, act=nn.SiLU), nn.Conv2d(16, classes, 1))
                                 for c in (32, 64))
        self.register_buffer("proj", torch.arange(reg_max, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p3 = self.fuse(torch.cat([self.up(p4), p3], 1))
        outs = []
        for i, p in enumerate((p3, p4)):
            b = self.box[i](p)
            n, _, h, w = b.shape
            b = (b.view(n, 4, self.reg, h * w).softmax(2) * self.proj.view(1, 1, -1, 1)).sum(2)
            c = self.cls[i](p).view(n, -1, h * w).sigmoid()
            outs.append(torch.cat([b, c], 1))
        return torch.cat(outs, 2)


# --- CRNN with a written-out LSTM --------------------------------------------------------------------

class UnrolledLSTMCRNN(nn.Module):
    """A captcha-style CRNN: conv-BN-ReLU and max pools down to one feature vector per column, then an LSTM
    written out step by step (Gemm, Sigmoid, Tanh, Mul and Add of two tensors, as some exporters unroll
    it), a linear classifier per step; output ``[N, steps, classes]``."""

    def __init__(self, classes: int = 11, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_bn(1, 16, 3), nn.MaxPool2d(2), _conv_bn(16, 32, 3), nn.MaxPool2d(2),
                                      _conv_bn(32, 32, 3), nn.MaxPool2d((2, 1)))
        self.hidden = hidden
        self.ih = nn.Linear(32, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.features(x).mean(2).permute(0, 2, 1)  # [N, steps, 32]
        h = torch.zeros(x.shape[0], self.hidden)
        c = torch.zeros(x.shape[0], self.hidden)
        outs = []
        for t in range(seq.shape[1]):
            i, f, g, o = (self.ih(seq[:, t]) + self.hh(h)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(self.out(h))
        return torch.stack(outs, 1)


# --- export -----------------------------------------------------------------------------------------

#: zoo name → (constructor, input shape with batch 1)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "torch_mobilenetv3_block": (MobileNetV3Block, (1, 3, 64, 64)),
    "torch_resnet_basic": (ResNetBasic, (1, 3, 64, 64)),
    "torch_lraspp": (LRASPPNet, (1, 3, 64, 64)),
    "torch_convtranspose_decoder": (ConvTransposeDecoder, (1, 3, 64, 64)),
    "torch_yolov8_like": (YoloV8Like, (1, 3, 128, 128)),
    "torch_crnn_unrolled_lstm": (UnrolledLSTMCRNN, (1, 1, 16, 32)),
}


def randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters: mean ~ N(0, 0.5), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5),
    beta ~ N(0, 0.2)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.2)


def build(name: str, seed: int = SEED) -> tuple[nn.Module, tuple[int, ...]]:
    """The eval-mode module named ``name`` (a key of ARCHITECTURES) with seeded weights, and its input shape."""
    ctor, shape = ARCHITECTURES[name]
    torch.manual_seed(seed)
    module = ctor()
    randomize_batchnorm(module, torch.Generator().manual_seed(seed + 1))
    return module.eval(), shape


def export(name: str, path: str | Path, seed: int = SEED) -> Path:
    """Export the architecture ``name`` to ``path`` (opset 17, IR 8, dynamic batch ``N``); returns the path."""
    import onnx

    module, shape = build(name, seed)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 2))
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (x,), buf, opset_version=OPSET, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = IR_VERSION
    model.producer_name = "onnxsq-zoo (torch " + torch.__version__.split("+")[0] + ")"
    model.doc_string = f"zoo/torch_models.py {name}, seed {seed}: random weights, random BatchNorm statistics"
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path
