"""Float islands: the steps of a layer that has no integer form, run in float by one small
onnxruntime session (graph optimizations off) built from exactly those nodes.

Its inputs are the dequantized integer tensors (``q * 2**-shift``, exact in float32), its constants
the model's (dequantized weights as float32, exactly); its output is quantized by the layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import DataError, first_line
from ..runtime import make_session
from .program import Const, Step

log = logging.getLogger(__name__)


def _node(step: Step) -> onnx.NodeProto:
    attrs = {}
    for k, v in step.attrs.items():
        attrs[k] = numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
    return helper.make_node(step.op, step.inputs, step.outputs, name=step.name or None, domain=step.domain or None,
                            **attrs)


def const_array(c: Const) -> np.ndarray:
    """A constant as the float model sees it (dequantized when it has a shift)."""
    if c.shift is None:
        return c.values
    return (c.values * np.ldexp(1.0, -c.shift)).astype(np.float32)


class FloatRunner:
    """Runs lists of steps in float; one cached session per key (a layer)."""

    def __init__(self, opsets: Mapping[str, int], float_types: Mapping[str, int], ir_version: int) -> None:
        self.opsets = dict(opsets)
        self.types = dict(float_types)
        self.ir_version = ir_version
        self._sessions: dict[tuple, object] = {}

    def _build(self, steps: Sequence[Step], feeds: Mapping[str, np.ndarray], consts: Mapping[str, Const],
               outputs: Sequence[str]) -> onnx.ModelProto:
        produced = {o for s in steps for o in s.outputs}
        used = [i for s in steps for i in s.inputs if i and i not in produced]
        inits, inputs, seen = [], [], set()
        for name in used:
            if name in seen:
                continue
            seen.add(name)
            if name in feeds:
                elem = helper.np_dtype_to_tensor_dtype(np.asarray(feeds[name]).dtype)
                inputs.append(helper.make_tensor_value_info(name, elem, None))
            elif name in consts:
                inits.append(numpy_helper.from_array(np.asarray(const_array(consts[name])), name))
        outs = [helper.make_tensor_value_info(o, self.types.get(o, TensorProto.FLOAT), None) for o in outputs]
        graph = helper.make_graph([_node(s) for s in steps], "island", inputs, outs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])
        model.ir_version = self.ir_version
        return model

    def session_of(self, key: str):
        """The one session built for ``key`` (None: none, or several, e.g. for feeds of other dtypes)."""
        found = [s for sig, s in self._sessions.items() if sig[0] == key]
        return found[0] if len(found) == 1 else None

    def run(self, key: str, steps: Sequence[Step], feeds: Mapping[str, np.ndarray], consts: Mapping[str, Const],
            outputs: Sequence[str]) -> list[np.ndarray]:
        """``outputs`` of ``steps`` on ``feeds`` (float arrays by tensor name)."""
        sig = (key, tuple(outputs), tuple(sorted((k, np.asarray(v).dtype.str) for k, v in feeds.items())))
        session = self._sessions.get(sig)
        if session is None:
            model = self._build(steps, feeds, consts, outputs)
            try:
                # one thread, no spinning: an island is small, and idle spinning threads of many
                # island sessions take the cores from the integer kernels between their runs
                session = make_session(model, intra_op_threads=1, spin=False)
            except Exception as exc:  # noqa: BLE001 - onnxruntime rejects a node it cannot run
                raise DataError(f"{key}: its float steps do not run in onnxruntime: {first_line(exc)}") from None
            self._sessions[sig] = session
        names = {i.name for i in session.get_inputs()}
        feed = {k: np.asarray(v, order="C") for k, v in feeds.items() if k in names}  # ascontiguousarray makes 0-d 1-d
        try:
            return session.run(list(outputs), feed)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{key}: float steps failed on the data: {first_line(exc)}") from None
