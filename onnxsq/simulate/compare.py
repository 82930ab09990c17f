"""The reference: onnxruntime's optimized run (all graph optimizations: QLinearConv, QGemm, ...) of the
same QDQ model, whole and layer by layer.

Two facts measured here shape it:

- onnxruntime's default x86 kernels without VNNI (AVX2, AVX-512F) multiply u8 by s8 with
  ``vpmaddubsw``, which saturates each *pair* of products at int16: a layer whose input and weights
  are both large loses bits (up to 23 steps on a per-channel digits conv). With the session option
  ``session.x64quantprecision=1`` it uses exact u8u8 kernels. The reference is that *precise* run;
  the default run is measured too (``ort_default_*`` in the report).
- Fetching an integer tensor from the whole model changes what onnxruntime fuses (a Q/DQ pair with a
  second reader stays float). So per layer, each layer is cut out of the model
  (``onnx.utils.Extractor``: its integer inputs, their DequantizeLinear, its steps and its
  QuantizeLinear, plus one DequantizeLinear to fetch the result) and run in onnxruntime, optimized, on
  the simulation's own inputs of that layer: its difference is that layer's alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import DataError, first_line
from ..runtime import import_ort, make_session, quiet_run_options
from .program import Layer, Program

log = logging.getLogger(__name__)
FETCH = "__onnxsq_fetch"


def ort_session(model: onnx.ModelProto | str, *, precise: bool = True, spin: bool = True):
    """An onnxruntime session with all graph optimizations; ``precise``: exact u8u8 integer kernels;
    ``spin=False``: its threads sleep between runs (a session that is not timed: its spinning threads
    would take the cores from the simulation run between its runs)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if precise:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def step_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """``(max |a - b|, elements that differ)`` of two integer arrays (shape mismatch: both -1)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        return -1, -1
    d = np.abs(a - b)
    return int(d.max(initial=0)), int(np.count_nonzero(d))


def output_steps(program: Program, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-element difference of two graph-output arrays in steps of the output's scale (float
    outputs of a tail: in float units)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    shift = program.tensors[program.dq[name]].shift if name in program.dq else 0
    return np.abs(a - b) * np.ldexp(1.0, shift)


@dataclass
class LayerRef:
    session: Any
    inputs: list[str]
    fetch: str


@dataclass
class Reference:
    """onnxruntime's optimized sessions over ``model``: whole (precise and default) and per layer."""

    model: onnx.ModelProto
    program: Program
    per_layer: bool = True
    _layers: dict[str, LayerRef | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.default = ort_session(self.model, precise=False)
        self.unoptimized = make_session(self.model.SerializeToString(), spin=False)  # DQ -> float op -> Q
        self.kind = "onnxruntime, all optimizations, precise u8u8 kernels (session.x64quantprecision=1)"
        try:
            self.precise = ort_session(self.model, precise=True, spin=False)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's u8u8 rewrite fails on some graphs
            log.warning("onnxruntime's precise kernels fail on this model (%s); comparing with its default "
                        "kernels", first_line(exc)[:120])
            self.precise = self.default
            self.kind = "onnxruntime, all optimizations, default kernels (the precise ones fail on this model)"
        self._options = quiet_run_options()
        self._extractor = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """The whole model's outputs: ``{"ort": precise, "ort_default": default kernels,
        "ort_unoptimized": graph optimizations off}``."""
        out = {}
        for key, session in (("ort", self.precise), ("ort_default", self.default),
                             ("ort_unoptimized", self.unoptimized)):
            try:
                out[key] = dict(zip(self.program.outputs, session.run(None, feeds, self._options)))
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad feeds
                raise DataError(f"onnxruntime rejects the data: {first_line(exc)}") from None
        return out

    def layer(self, layer: Layer, ints: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """onnxruntime's result for ``layer`` alone on the simulation's inputs ``ints`` (None: the layer
        could not be cut out or run; logged)."""
        ref = self._layer_ref(layer)
        if ref is None:
            return None
        feed = {}
        for name in ref.inputs:
            if name in self.program.tensors:
                qt = self.program.tensors[name]
                feed[name] = (ints[name] + qt.zero).astype(_np_type(qt))
            else:
                feed[name] = feeds[name]
        try:
            (out,) = ref.session.run([ref.fetch], feed, self._options)
        except Exception as exc:  # noqa: BLE001
            log.info("%s: onnxruntime cannot run the layer alone: %s", layer.name, first_line(exc))
            self._layers[layer.name] = None
            return None
        if layer.out is None:
            return out
        return np.rint(np.ldexp(out.astype(np.float64), layer.out.shift)).astype(np.int64)

    def _layer_ref(self, layer: Layer) -> LayerRef | None:
        if layer.name in self._layers:
            return self._layers[layer.name]
        try:
            ref = self._build_layer(layer)
        except Exception as exc:  # noqa: BLE001 - a layer that cannot be cut out is measured whole only
            log.info("%s: not cut out for a per-layer reference: %s", layer.name, first_line(exc))
            ref = None
        self._layers[layer.name] = ref
        return ref

    def _build_layer(self, layer: Layer) -> LayerRef:
        if self._extractor is None:
            self._extractor = onnx.utils.Extractor(self.model)
        sub = self._extractor.extract_model(list(layer.inputs), [layer.output])
        g = sub.graph
        fetch = layer.output + FETCH
        if layer.out is not None:
            scale = fetch + "_scale"
            step = np.asarray(np.ldexp(1.0, -layer.out.shift), np.float32)
            g.initializer.append(numpy_helper.from_array(step, scale))
            zp = []
            if layer.out.zero:  # the codes of a signed tensor on an unsigned carrier
                zp = [fetch + "_zero_point"]
                g.initializer.append(numpy_helper.from_array(np.array(layer.out.zero, _np_type(layer.out)), zp[0]))
            g.node.append(helper.make_node("DequantizeLinear", [layer.output, scale, *zp], [fetch], name=fetch))
        else:
            g.node.append(helper.make_node("Identity", [layer.output], [fetch], name=fetch))
        del g.output[:]
        g.output.append(helper.make_tensor_value_info(fetch, self.program.float_types.get(layer.output, 1)
                                                      if layer.out is None else onnx.TensorProto.FLOAT, None))
        sub.ir_version = self.model.ir_version
        try:
            session = ort_session(sub, precise=True, spin=False)
        except Exception:  # noqa: BLE001 - as for the whole model
            session = ort_session(sub, precise=False, spin=False)
        return LayerRef(session, [i.name for i in g.input if i.name not in {t.name for t in g.initializer}], fetch)


def _np_type(qt) -> np.dtype:
    """The carrier onnxruntime holds ``qt``'s codes in."""
    return np.dtype(f"{'int' if qt.signed and not qt.zero else 'uint'}{qt.bits}")
