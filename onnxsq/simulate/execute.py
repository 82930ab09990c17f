"""Running an integer program (:mod:`.program`) on a batch: integer layers in exact fixed point
(:mod:`.fixed`), float islands in onnxruntime (:mod:`.islands`), every layer output requantized by a
shift with the chosen rounding and saturated to its integer type.

Accumulators (Conv, ConvTranspose, Gemm, MatMul after the bias add) are checked against
``acc_bits``: an element past it is counted and wrapped in two's complement, as a MAC unit of that
width leaves it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from . import kernels as K
from . import moves as M
from . import plan as P
from .fixed import KERNELS, Fixed, NotInteger, align
from .islands import FloatRunner
from .lut import Table, build_table, moved_form
from .lut_moves import moves_layer
from .plan_mac import Scratch
from .program import Layer, Program, Step
from .rounding import ROUNDINGS, float_saturate, int_limits, requantize_saturate, wrap

log = logging.getLogger(__name__)

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _frozen(value: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.int64)
    a.flags.writeable = False
    return a


ONE = _frozen(1)  # the divisor of every value but an average's


@dataclass
class LayerStats:
    """What one layer did over every batch run so far."""

    acc_max: int = 0  # largest |accumulator| observed
    acc_overflow: int = 0  # accumulator elements past acc_bits
    saturated: int = 0  # output elements clipped to the integer type
    elements: int = 0
    fallback: str = ""  # why an integer layer ran in float after all


@dataclass
class Result:
    ints: dict[str, np.ndarray]  # every integer tensor of the program
    outputs: dict[str, np.ndarray]  # graph outputs as the QDQ model gives them (float: q * 2**-shift)


@dataclass
class Simulator:
    program: Program
    rounding: str = "half-even"
    acc_bits: int = 32
    stats: dict[str, LayerStats] = field(default_factory=dict)
    profile: dict[str, float] | None = None  # when a dict: seconds spent per layer kind and op ("int:Conv")
    compiled: bool = True  # layers compiled for their shapes after their first run (:mod:`.plan`)

    def __post_init__(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding {self.rounding!r}")
        p = self.program
        self.floats = FloatRunner(p.opsets, p.float_types, p.ir_version)
        self.stats = {lay.name: LayerStats() for lay in p.layers}
        self._weights: dict[str, Fixed] = {}
        self._tables: dict[str, Table] = {}
        self._plain: dict[tuple, dict[str, Any]] = {}
        self._shifts: dict[str, np.ndarray] = {}
        self._feeds: Mapping[str, np.ndarray] = {}
        self._plans: dict[str, P.Plan] = {}
        self._scratch = Scratch()  # the compiled layers' buffers
        self._moved: dict[str, Any] = {}  # lut layers that also move elements: their split (.lut_moves)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Result:
        """Simulate one batch; ``feeds``: the model's float inputs by name."""
        self._feeds = feeds
        ints: dict[str, np.ndarray] = {}
        floats: dict[str, np.ndarray] = {}
        prof, plans = self.profile, self._plans
        for layer in self.program.layers:
            t0 = time.perf_counter() if prof is not None else 0.0
            plan = plans.get(layer.name)
            if plan is None or not plan.fits(ints, feeds) or not self._planned(plan, layer, ints, feeds):
                self._layer(layer, ints, floats, feeds, plans.get(layer.name) is not P.NOPLAN and self.compiled)
            if prof is not None:
                key = f"{layer.kind}:{layer.op}"
                prof[key] = prof.get(key, 0.0) + time.perf_counter() - t0
        return Result(ints, self._outputs(ints, floats, feeds))

    def _planned(self, plan: P.Plan, layer: Layer, ints: dict, feeds: Mapping[str, np.ndarray]) -> bool:
        """Run the layer's compiled form; False (and no plan from now on) where it failed: a safety net,
        the generic interpreter then runs the layer and says what is wrong."""
        try:
            ints[layer.output] = plan.run(ints, feeds)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the generic path
            log.warning("%s: its compiled form failed (%s: %s); the generic interpreter runs it", layer.name,
                        type(exc).__name__, exc)
            self._plans[layer.name] = P.NOPLAN
            return False

    def _layer(self, layer: Layer, ints: dict, floats: dict, feeds: Mapping[str, np.ndarray], compile_: bool) -> None:
        """One layer by the generic interpreter; ``compile_``: then compile it for these shapes (:mod:`.plan`)."""
        st = self.stats[layer.name]
        env: dict[str, Any] = {}
        trace: list | None = [] if compile_ else None
        if layer.kind == "lut" and not st.fallback:
            q = self._lut_layer(layer, ints, st, env, trace)
            if q is not None:
                ints[layer.output] = q
                if compile_:
                    self._plans[layer.name] = P.compile_layer(self, layer, ints, feeds, env, trace)
                return
            env, trace = {}, [] if compile_ else None
        if layer.kind == "int" and not st.fallback:
            try:
                value = self._int_layer(layer, ints, st, env, trace)
            except NotInteger as exc:
                st.fallback = f"no exact integer form on this data ({exc}): computed in float"
                log.info("%s: %s", layer.name, st.fallback)
                value = self._float_layer(layer, ints, feeds)
            except (ValueError, IndexError, TypeError) as exc:  # a case the integer kernels do not cover
                st.fallback = f"integer kernel failed ({type(exc).__name__}: {exc}): computed in float"
                log.warning("%s: %s", layer.name, st.fallback)
                value = self._float_layer(layer, ints, feeds)
        else:
            value = self._float_layer(layer, ints, feeds)
        if layer.out is None:
            floats[layer.output] = value
            return
        ints[layer.output] = self._requantize(value, layer, st)
        if compile_:
            self._plans[layer.name] = (P.NOPLAN if st.fallback else
                                       P.compile_layer(self, layer, ints, feeds, env, trace))

    def _lut_layer(self, layer: Layer, ints: dict, st: LayerStats, env: dict, trace: list | None) -> np.ndarray | None:
        """The layer's output codes by table look-up (None: no table after all; it runs in float). A
        layer that also moves elements (:mod:`.lut_moves`) moves its input's codes first (``env``,
        ``trace``: of that integer run, as :meth:`_int_layer`'s)."""
        try:
            table = self._tables.get(layer.name)
            if table is None:
                stored = layer.table if self.rounding == "half-even" else None  # a package's (half-even) table
                table = stored or build_table(self.program, layer, self.floats, self.rounding)
                self._tables[layer.name] = table
                self._moved[layer.name] = moved_form(self.program, layer)
            moved = self._moved.get(layer.name)
            codes = ints[layer.inputs[0]]
            if moved is not None:
                codes = self._int_layer(moves_layer(layer, moved), ints, st, env, trace).v
            q, n = table.lookup(codes)
        except (ValueError, IndexError, TypeError, DataError, NotInteger) as exc:  # DataError: steps fail on the codes
            st.fallback = f"no look-up table ({exc}): computed in float"
            log.info("%s: %s", layer.name, st.fallback)
            return None
        st.saturated += n
        st.elements += q.size
        return q

    def _requantize(self, value: Any, layer: Layer, st: LayerStats) -> np.ndarray:
        out = layer.out
        if isinstance(value, Fixed):
            q, n = requantize_saturate(value.v, value.shift - out.shift, self.rounding, value.div, out.bits,
                                       out.signed)
        else:
            q, n = float_saturate(value, out.shift, self.rounding, out.bits, out.signed)
        st.saturated += n
        st.elements += q.size
        return q

    def _outputs(self, ints: dict, floats: dict, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.program
        out = {}
        for name in p.outputs:
            if name in p.dq:
                src = p.dq[name]
                out[name] = (ints[src] * np.float32(np.ldexp(1.0, -p.tensors[src].shift))).astype(np.float32)
            elif name in ints:
                out[name] = ints[name]
            elif name in floats:
                out[name] = floats[name]
            elif name in feeds:
                out[name] = np.asarray(feeds[name])
            else:
                out[name] = np.asarray(p.consts[name].values)
        return out

    # float -----------------------------------------------------------------------------------------
    def _float_layer(self, layer: Layer, ints: dict, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        p = self.program
        if not layer.steps:
            src = layer.source
            if src in p.dq:
                return self._dequant(p.dq[src], ints)
            return np.asarray(feeds[src])
        fl: dict[str, np.ndarray] = {}
        for s in layer.steps:
            for i in s.inputs:
                if i in p.dq:
                    fl[i] = self._dequant(p.dq[i], ints)
                elif i in feeds and i in p.inputs:
                    fl[i] = np.asarray(feeds[i])
        return self.floats.run(layer.name, layer.steps, fl, p.consts, [layer.source])[0]

    def _dequant(self, name: str, ints: dict) -> np.ndarray:
        return (ints[name] * np.float32(np.ldexp(1.0, -self.program.tensors[name].shift))).astype(np.float32)

    # integer ---------------------------------------------------------------------------------------
    def _value(self, name: str, env: dict, ints: dict) -> Any:
        if not name:
            return None
        if name in env:
            return env[name]
        p = self.program
        if name in p.dq:
            src = p.dq[name]
            shift = self._shifts.get(src)
            if shift is None:
                shift = self._shifts[src] = _frozen(p.tensors[src].shift)
            return Fixed(ints[src], shift, ONE)
        if name in p.inputs and name not in p.consts:  # a float graph input read for its shape
            return np.asarray(self._feeds[name])
        c = p.consts[name]
        if c.shift is None:
            return c.values
        fixed = self._weights.get(name)
        if fixed is None:  # weights keep their stored dtype (int8, int32); kernels widen what they compute
            fixed = Fixed(c.values, np.asarray(c.shift, dtype=np.int64), np.asarray(1, dtype=np.int64), const=True)
            self._weights[name] = fixed
        return fixed

    def _int_layer(self, layer: Layer, ints: dict, st: LayerStats, env: dict, trace: list | None) -> Any:
        """The layer's value (``env``: every tensor's; ``trace``: when a list, ``(step, args, result)``
        of each step is appended)."""
        for step in layer.steps:
            args = [self._value(i, env, ints) for i in step.inputs]
            if not any(isinstance(a, Fixed) for a in args):
                env.update(self._plain_step(layer, step, args))
                continue
            result = self._step(step, args)
            if step.op == "Dropout" and len(step.outputs) > 1 and step.outputs[1]:
                env[step.outputs[1]] = np.ones(result.v.shape, dtype=bool)  # inference: keep everything
            if step.op in MAC_OPS:
                result = self._check_acc(result, st)
            if trace is not None:
                trace.append((step, args, result))
            if step.op == "Split":
                env.update((o, r) for o, r in zip(step.outputs, result) if o)
                continue
            env[step.outputs[0]] = result
        return env[layer.source]

    def _plain_step(self, layer: Layer, step: Step, args: list) -> dict[str, Any]:
        """A step on plain values only (shapes, constants): run in onnxruntime, and remembered for the
        same small inputs (shape arithmetic gives the same result every batch of the same shape)."""
        feeds = {i: a for i, a in zip(step.inputs, args) if i and i not in self.program.consts}
        key = None
        if all(isinstance(a, np.ndarray) and a.size <= 64 for a in feeds.values()):
            key = (layer.name, id(step), tuple((k, a.dtype.str, a.shape, a.tobytes()) for k, a in feeds.items()))
            hit = self._plain.get(key)
            if hit is not None:
                return hit
        outputs = [o for o in step.outputs if o]
        outs = self.floats.run(f"{layer.name}/{step.name or step.outputs[0]}", [step], feeds, self.program.consts,
                               outputs)
        result = dict(zip(outputs, outs))
        if key is not None:
            for v in outs:
                v.flags.writeable = False  # shared by later batches
            self._plain[key] = result
        return result

    def _check_acc(self, acc: Fixed, st: LayerStats) -> Fixed:
        if not acc.v.size:
            return acc
        vmin, vmax = int(acc.v.min()), int(acc.v.max())
        st.acc_max = max(st.acc_max, vmax, -vmin)
        lo, hi = int_limits(self.acc_bits, True)
        if lo <= vmin and vmax <= hi:
            return acc
        v, n = wrap(acc.v, self.acc_bits)
        st.acc_overflow += n
        return Fixed(v, acc.shift, acc.div) if n else acc

    def _step(self, step: Step, args: list) -> Any:
        op = step.op
        if op in KERNELS:
            return KERNELS[op](step, *args)
        x = args[0]
        if op in ("Add", "Sum"):
            vs, common = align(args)
            return Fixed(sum(vs[1:], vs[0]), common, np.asarray(1))
        if op == "Relu":
            return Fixed(np.maximum(x.v, 0), x.shift, x.div)
        if op in ("MaxPool", "GlobalMaxPool"):
            if op == "GlobalMaxPool":
                return Fixed(x.v.max(axis=tuple(range(2, x.v.ndim)), keepdims=True), x.shift, x.div)
            return Fixed(K.max_pool(x.v, step.attrs), x.shift, x.div)
        if op in ("Identity", "Dropout"):
            return x
        if op == "Shape":
            shape = np.asarray(x.v.shape, dtype=np.int64)
            return shape[step.attrs.get("start", 0):step.attrs.get("end", len(shape))]
        if op == "Split":
            return [x.moved(part) for part in M.split(step, x.v, args[1:])]
        if op in ("ReduceSum", "ReduceMax", "ReduceMin"):
            return M.reduce(step, x, args[1:])
        if op == "Concat":
            if not all(isinstance(a, Fixed) and a.plain for a in args):
                raise NotInteger("a concat of per-channel or float values")
            vs, common = align(args)
            return Fixed.of(np.concatenate(vs, axis=step.attrs["axis"]), common)
        return x.moved(M.shape_op(step, x.v, args[1:]))
