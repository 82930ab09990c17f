"""Does this onnxruntime, on this CPU, saturate u8 x s8 products in int16 pairs?

onnxruntime's x86 integer kernels without VNNI (AVX2, AVX-512BW) multiply uint8 activations by int8
weights with ``vpmaddubsw``, which adds each *pair* of adjacent products and saturates the sum at int16:
``255 * 127 * 2 = 64770 > 32767``. With VNNI (``vpdpbusd``, AVX-512 VNNI / AVX-VNNI), on ARM and in the
u8 x u8 kernels the products accumulate in int32 and every result is exact. Which kernel a session takes
is onnxruntime's choice at run time (its CPU dispatch), so it is asked, not guessed from CPU flags: a
1x1 QDQ Conv whose every pair saturates runs once, and its output says which arithmetic ran
(:func:`pairs_saturate`). :data:`onnxsq.passes.quantize.config.QuantizeConfig.pair_safe` left at ``None``
(auto) gives 7-bit weights only where this is true.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

K = 8  # input channels: 4 pairs of 255 * 127 products
OUT_SHIFT = 12  # the output's scale 2**12: exact sum 259080 -> code 63; four saturated pairs 131068 -> 32


def probe_model() -> onnx.ModelProto:
    """uint8 input at scale 1 → Conv 1x1 with int8 weights 127 at scale 1 → int8 output at 2**OUT_SHIFT,
    in the QDQ form onnxruntime fuses into its integer convolution."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    out_scale = numpy_helper.from_array(np.array(2.0**OUT_SHIFT, np.float32), "out_scale")
    u0 = numpy_helper.from_array(np.array(0, np.uint8), "u0")
    s0 = numpy_helper.from_array(np.array(0, np.int8), "s0")
    w = numpy_helper.from_array(np.full((1, K, 1, 1), 127, np.int8), "w")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "u0"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "one", "u0"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "one", "s0"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "out_scale", "s0"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "out_scale", "s0"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "pairs_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K, 1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 1, 1])],
        initializer=[one, out_scale, u0, s0, w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def exact_code() -> int:
    """The output code exact arithmetic gives (round half to even, as QuantizeLinear)."""
    return int(np.clip(np.rint(K * 255 * 127 / 2.0**OUT_SHIFT), -128, 127))


@functools.cache
def pairs_saturate() -> bool:
    """True when onnxruntime's default CPU session computes the probe's integer convolution with
    saturating int16 pairs (x86 without VNNI); False where it computes it exactly."""
    from ..runtime import make_session

    session = make_session(probe_model(), optimize=True)
    out = session.run(None, {"x": np.full((1, K, 1, 1), 255.0, np.float32)})[0]
    return int(round(float(out.reshape(-1)[0]) / 2.0**OUT_SHIFT)) != exact_code()
