"""The calibration session: onnxruntime's optimized graph over the caller's weight arrays.

:class:`~onnxsq.runtime.FedSession` feeds the weights as graph inputs at every run, so onnxruntime
cannot optimize around them (no fused convolutions, no blocked NCHWc layout). Here the skeleton's
weight inputs become *external-data initializers* whose memory is the caller's numpy arrays
(``SessionOptions.add_external_initializers``: used in place, not copied), and the session runs with
every graph optimization. What it adds is only what the optimizations make of the weights (the
convolutions' reordered weights, about one float copy of them: ResNet-50-sized +93 MB) and it buys
~10% of the calibration forward (ResNet-50-sized, 1 thread: 127 -> 114 ms CPU per sample with the
statistic nodes). The observed tensors are graph outputs or read by the statistic nodes, so
onnxruntime keeps each of them as a tensor of its own: a fusion never swallows one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import DataError, first_line
from ..runtime import import_ort, make_session, quiet_run_options

LOCATION = "onnxsq-calibration-weights"  # a name, never read: the data come from the arrays
ARENA = False  # onnxruntime's CPU arena: ResNet-50-sized quantize peaked +450 MB with it, +378 MB without


def external_skeleton(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` (a skeleton whose ``weights`` are graph inputs) with those inputs as external-data
    initializers of the same name, type and shape (no data)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # a skeleton: small
    keep = [i for i in out.graph.input if i.name not in weights]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    for name, v in weights.items():
        t = out.graph.initializer.add()
        t.name, t.data_type, t.data_location = name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), TensorProto.EXTERNAL
        t.dims.extend(v.shape)
        for key, value in (("location", LOCATION), ("offset", "0"), ("length", str(v.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    return out


class CalibrationSession:
    """``run(fetch, feed)`` over ``model`` (a skeleton) with ``weights`` in place, all optimizations."""

    def __init__(self, model: onnx.ModelProto, weights: Mapping[str, np.ndarray], *, mismatch: str,
                 intra_op_threads: int = 0) -> None:
        ort = import_ort()
        self._values = {k: ort.OrtValue.ortvalue_from_numpy(np.require(v, requirements="C"))
                        for k, v in weights.items()}  # alive as long as the session
        self._mismatch = mismatch
        self._ortvalue = ort.OrtValue.ortvalue_from_numpy
        self.session = make_session(external_skeleton(model, weights).SerializeToString(), optimize=True,
                                    memory_pattern=False, in_node_order=True, intra_op_threads=intra_op_threads,
                                    spin=False, external=self._values, arena=ARENA)
        self._quiet = quiet_run_options()

    def run(self, fetch: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: self._ortvalue(np.require(v, requirements="C")) for k, v in feed.items()}
        try:
            return [v.numpy() for v in self.session.run_with_ort_values(fetch, feeds, self._quiet)]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad feeds
            raise DataError(f"{self._mismatch}: {first_line(exc)}") from None
