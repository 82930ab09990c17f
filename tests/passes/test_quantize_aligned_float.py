"""quantize.aligned_float: the float model with the scale alignment carried by its weights computes the float
model's function, and the pass run on it without alignment quantizes the aligned tensors (what label-free
fine-tuning's student starts from)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import relu_net_peaking, run, shift5_feed

from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.aligned_float import aligned_float_model

pytest.importorskip("onnxruntime")


def r_fold(rep) -> int:
    return rep.summary.get("affine_folded_first", 0)


def _sqnr(model, q, seeds=range(10, 16)) -> float:
    sig = noise = 0.0
    for s in seeds:
        a, b = run(model, shift5_feed(s))[0].astype(np.float64), run(q, shift5_feed(s))[0]
        sig, noise = sig + float(np.square(a).sum()), noise + float(np.square(a - b).sum())
    return 10 * np.log10(sig / noise)


@pytest.mark.parametrize("pool", [True, False])
def test_the_aligned_float_model_is_the_same_function_and_quantizes_as_the_aligned_pass(pool):
    model = relu_net_peaking(top=4.3, pool=pool)
    calib = [shift5_feed(s) for s in range(4)]
    cfg = QuantizeConfig(report_samples=0, pair_safe=False)
    af = aligned_float_model(model, calib, cfg)
    assert af is not None
    onnx.checker.check_model(af, full_check=True)
    assert [o.name for o in af.graph.output] == [o.name for o in model.graph.output]
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in af.graph.node)
    for s in range(3):  # the weights carry the factors: the function is the float model's (one rounding each)
        np.testing.assert_allclose(run(af, shift5_feed(s))[0], run(model, shift5_feed(s))[0], rtol=1e-5, atol=1e-5)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    changed = [t.name for t in af.graph.initializer if t.name in inits
               and not np.allclose(onnx.numpy_helper.to_array(t), inits[t.name])]
    assert changed  # a factor went into the weights
    aligned, _ = quantize(model, calib, config=cfg)
    unaligned, _ = quantize(model, calib, config=QuantizeConfig(report_samples=0, pair_safe=False,
                                                                align_scales=False))
    start, rep = quantize(af, calib, config=QuantizeConfig(report_samples=0, pair_safe=False, align_scales=False))
    assert rep.summary.get("scales_aligned", 0) == 0
    # its quantization is the aligned one inside (the output's factor folds back into the last Conv: the
    # pass folds a product after a layer into it), closer to float than the unaligned one's
    assert r_fold(rep) == 1
    assert _sqnr(model, unaligned) + 0.2 < _sqnr(model, start) < _sqnr(model, aligned)


def test_nothing_to_align_gives_none():
    model = relu_net_peaking(top=4.3)
    calib = [shift5_feed(s) for s in range(2)]
    assert aligned_float_model(model, calib, QuantizeConfig(align_scales=False)) is None
