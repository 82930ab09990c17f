"""fold-batchnorm on models exported from PyTorch (torch is in the training environment only)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from builders import assert_equivalent, ops, run

from onnxsq.passes.fold_batchnorm import fold_batchnorm

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


class ConvBnRelu(torch.nn.Module):
    """Conv-BN-ReLU blocks: plain, strided depthwise, bias-free 1x1, and Linear → BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), torch.nn.BatchNorm2d(8)
        self.c3, self.b3 = torch.nn.Conv2d(8, 6, 1, bias=False), torch.nn.BatchNorm2d(6)
        self.fc, self.b4 = torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.b4(self.fc(x.mean((2, 3))))


class ConvTransposeBn(torch.nn.Module):
    """An upsampling decoder: grouped ConvTranspose-BN-ReLU and a 1-D ConvTranspose-BN."""

    def __init__(self) -> None:
        super().__init__()
        self.up1, self.b1 = torch.nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2), torch.nn.BatchNorm2d(6)
        self.up2, self.b2 = torch.nn.ConvTranspose1d(6, 3, 3, stride=2, output_padding=1, bias=False), \
            torch.nn.BatchNorm1d(3)

    def forward(self, x):
        x = torch.relu(self.b1(self.up1(x)))
        return self.b2(self.up2(x.flatten(2)))


def _randomize_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Trained-looking BN statistics (fresh ones are the identity and would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return net.eval()


def export(net: torch.nn.Module, shape: tuple[int, ...], opset: int, preserve: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    kwargs = {"training": torch.onnx.TrainingMode.PRESERVE} if preserve else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, torch.randn(*shape), buf, opset_version=opset, dynamo=False,
                              input_names=["x"], output_names=["y"], **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(net, torch.randn(*shape), buf, opset_version=opset,
                              input_names=["x"], output_names=["y"], **kwargs)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("preserve", [True, False], ids=["bn-kept-by-exporter", "exporter-defaults"])
@pytest.mark.parametrize("net_cls, shape", [(ConvBnRelu, (2, 3, 16, 16)), (ConvTransposeBn, (1, 4, 5, 5))],
                         ids=["conv-bn-relu", "convtranspose-bn"])
def test_exported_models_fold_completely(net_cls, shape, opset, preserve):
    """Everything foldable folds: no BN (and no Mul/Add stand-in) is left, outputs match, IR/opset kept.

    With its defaults the exporter fuses Conv+BN itself in eval mode; ``PRESERVE`` keeps every BN, as
    exported by older toolchains and other frameworks.
    """
    net = _randomize_bn(net_cls(), seed=opset)
    model = export(net, shape, opset, preserve)
    assert "BatchNormalization" in ops(model)
    folded, report = fold_batchnorm(model, verify=True)
    onnx.checker.check_model(folded)
    assert "BatchNormalization" not in ops(folded)
    assert {c.action for c in report.candidates} == {"folded"}, report.to_json()
    assert not {"Mul", "Add", "Sub", "Div", "Identity"} & set(ops(folded))
    assert folded.ir_version == model.ir_version and folded.opset_import == model.opset_import
    x = np.random.default_rng(opset).standard_normal(shape).astype(np.float32)
    assert_equivalent(model, folded, {"x": x})
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(folded, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)
