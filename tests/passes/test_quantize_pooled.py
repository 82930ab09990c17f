"""quantize's pooled-head headroom (.pooled): the tensors of a head after a global pool take ``BITS`` lower
shifts, nothing else moves; a squeeze-excitation branch, Softmax outputs and given parameters keep theirs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

pytest.importorskip("onnxruntime")

from builders import conv_classifier, run, se_head_classifier

from onnxsq.errors import InvalidOptionError
from onnxsq.params import read_params
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.pooled import pooled_head

HEAD = {"globalaveragepool_out23", "flatten_out25", "logits"}  # se_head_classifier's names


def _calib(n: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _params(tmp_path, tag: str, **cfg):
    out = tmp_path / f"{tag}.json"
    q, r = quantize(se_head_classifier(), _calib(), config=QuantizeConfig(pair_safe=False, **cfg), params_out=out)
    return q, r, read_params(out)


def test_pooled_head_is_the_head_and_not_the_excitation_branch():
    g = gs.import_onnx(se_head_classifier())
    g.toposort()
    assert pooled_head(g) == HEAD  # the SE branch's GAP/Conv/Relu gate the feature map; probs is Softmax's


def test_pooled_head_of_a_conv_classifier_and_of_a_model_without_one():
    g = gs.import_onnx(conv_classifier((8,)))
    g.toposort()
    assert pooled_head(g) == {"gap", "flat", "logits"}
    from builders import build_conv_model

    assert pooled_head(gs.import_onnx(build_conv_model())) == set()


@pytest.mark.parametrize("bits", [1, 2])
def test_head_shifts_drop_by_bits_and_nothing_else_moves(tmp_path, bits):
    q0, r0, p0 = _params(tmp_path, "off", pooled_headroom=0)
    q1, r1, p1 = _params(tmp_path, f"on{bits}", pooled_headroom=bits)
    onnx.checker.check_model(q1, full_check=True)
    assert "pooled_headroom" not in r0.summary
    acts = {k for k, v in p0.items() if v.kind == "activation"}
    head = HEAD & acts
    assert len(head) == 2 and "logits" in head  # the pooled features (one QDQ for GAP -> Flatten) and the logits
    assert r1.summary["pooled_headroom"] == {"bits": bits, "tensors": len(head)}
    for t in acts:
        want = p0[t].shift - (bits if t in head else 0)
        assert p1[t].shift == want, t
    for t in head:
        assert p1[t].estimator.endswith(f"+ {bits} bit{'s' if bits > 1 else ''} (pooled head)")
    # the model runs and stays close to float (the head is coarser by 2**bits, not broken)
    feeds = _calib(2, seed=7)
    for f in feeds:
        want, got = run(se_head_classifier(), f)[0], run(q1, f)[0]
        assert np.allclose(got, want, atol=0.25 * (2 ** bits) * float(np.abs(want).max()) / 8 + 0.1)


def test_scales_stay_powers_of_two(tmp_path):
    q, _, _ = _params(tmp_path, "on")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            m, _ = np.frexp(np.asarray(inits[n.input[1]], np.float64))
            assert np.all(m == 0.5)
            if len(n.input) > 2:
                assert not np.any(inits[n.input[2]])  # zero points 0


def test_given_parameters_keep_their_shift(tmp_path):
    _, _, p0 = _params(tmp_path, "off", pooled_headroom=0)
    given = {"logits": p0["logits"]}
    quantize(se_head_classifier(), _calib(), config=QuantizeConfig(pair_safe=False), params=given,
             params_out=tmp_path / "given.json")
    assert read_params(tmp_path / "given.json")["logits"].shift == p0["logits"].shift


def test_fast_has_none_and_the_option_is_checked():
    assert QuantizeConfig(effort="fast").resolved().pooled_headroom == 0
    assert QuantizeConfig().resolved().pooled_headroom == 1
    for bad in (-1, 8):
        with pytest.raises(InvalidOptionError, match="--pooled-headroom"):
            QuantizeConfig(pooled_headroom=bad).validate()



def test_scale_alignment_leaves_the_head_with_its_headroom():
    """A factor fitted to the head's few draws would take back the headroom: its domains are refused with
    that reason; with no headroom the same domain aligns."""
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(8)]

    def alignment(bits: int) -> dict:
        _, r = quantize(conv_classifier((8,)), iter(calib), config=QuantizeConfig(pooled_headroom=bits,
                                                                                    report_samples=0))
        return r.summary["scale_alignment"]

    on, off = alignment(1), alignment(0)
    assert {e["tensor"] for e in on["refused"] if "pooled head" in e["reason"]} == {"flat", "logits"}, on
    assert not on["aligned"]
    assert [e["tensor"] for e in off["aligned"]] == ["flat"]
    assert not any("pooled head" in e["reason"] for e in off["refused"])
