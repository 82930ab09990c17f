"""Layers compiled for the input shapes they ran on: what the generic interpreter (:mod:`.execute`)
works out again on every batch — which kernel, the shifts and divisors of every step, shape
arithmetic, slice indices, weight layouts, look-up table offsets, an island's session and feeds — is
worked out once, from the first batch's run (its trace), into one closure per layer.

A plan runs only on inputs of the shapes it was made for (another shape runs the generic path and
makes a new plan). Its steps compute exactly what the generic kernels compute: the shifts are the
trace's (they depend on the constants, never on the data), integer ranges are tracked statically
from the tensors' types, so a value known to stay below ``2**24`` is computed, shifted and rounded in
float32 (exact), and a requantization that cannot saturate is not checked. A step without a compiled
form runs its generic kernel inside the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels as K
from . import moves as M
from .fixed import Fixed
from .lut_moves import moves_layer
from .plan_mac import F32_EXACT, Range, mac_step
from .plan_tables import island_plan, lut_plan
from .rounding import int_limits, requantize_saturate

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
GATHERS = frozenset({"Gather", "Expand", "Resize", "Upsample"})  # compiled as one gather of precomputed indices


@dataclass(frozen=True)
class Plan:
    ints: tuple[tuple[str, tuple[int, ...]], ...]  # the integer tensors read, with the shapes compiled for
    feeds: tuple[tuple[str, tuple[int, ...]], ...]  # graph inputs read (for their shape)
    run: Callable[[dict, Mapping], np.ndarray] | None

    def fits(self, ints: dict, feeds: Mapping) -> bool:
        if self.run is None:
            return False
        for name, shape in self.ints:
            if ints[name].shape != shape:
                return False
        for name, shape in self.feeds:
            if np.shape(feeds[name]) != shape:
                return False
        return True


NOPLAN = Plan((), (), None)  # this layer is not compiled: it always runs the generic path


def compile_layer(sim, layer, ints: dict, feeds: Mapping, env: dict | None, trace: list | None) -> Plan:
    """The plan of ``layer`` after its generic run on these inputs (``env``/``trace``: the int layer's
    values and ``(step, args, result)`` per step), or :data:`NOPLAN`."""
    p = sim.program
    st = sim.stats[layer.name]
    run = None
    if layer.kind == "lut" and layer.name in sim._tables:
        run = _table(sim, layer, ints, env, trace, st)
    elif layer.kind == "float" and layer.out is not None:
        run = island_plan(sim, layer, st)
    elif layer.kind == "int" and trace is not None:
        run = _int(sim, layer, env, trace, st)
    if run is None:
        return NOPLAN
    shapes = tuple((i, ints[i].shape) for i in layer.inputs if i in ints)
    fed = tuple((i, np.shape(feeds[i])) for i in layer.inputs if i not in ints and i in p.inputs)
    return Plan(shapes, fed, run)


def _table(sim, layer, ints: dict, env: dict | None, trace: list | None, st) -> Callable | None:
    table, moved = sim._tables[layer.name], sim._moved.get(layer.name)
    if moved is None:
        return lut_plan(table, layer, ints[layer.inputs[0]].shape, st)
    made = _evaluator(sim, moves_layer(layer, moved), env or {}, trace or [], st)
    if made is None:
        return None
    evaluate, value, _ = made
    return lut_plan(table, layer, value.v.shape, st, evaluate)


def _int(sim, layer, env: dict, trace: list, st) -> Callable | None:
    made = _evaluator(sim, layer, env, trace, st)
    if made is None:
        return None
    evaluate, value, rng = made
    requant = _requant(value.shift - layer.out.shift, value.div, rng, layer.out, sim.rounding, st)
    return lambda ints, feeds: requant(evaluate(ints))


def _evaluator(sim, layer, env: dict, trace: list, st) -> tuple[Callable, Fixed, Range | None] | None:
    """``(evaluate(ints) -> the layer's value (integers), its trace Fixed, its range)`` from the trace."""
    p = sim.program
    value = env.get(layer.source)
    if not isinstance(value, Fixed):
        return None
    reads: dict[str, str] = {}
    ranges: dict[str, Range | None] = {}
    ops: list[tuple[Callable, tuple[str, ...], tuple[str, ...]]] = []
    for slot, (step, args, result) in enumerate(trace):
        if step.op == "Shape" or not any(isinstance(a, Fixed) for a in args):
            continue  # shape arithmetic: its results are the trace's
        names = []
        for i, a in zip(step.inputs, args):
            if isinstance(a, Fixed) and not a.const and (i in ranges or i in p.dq):
                if i not in ranges:
                    reads[i] = p.dq[i]
                    t = p.tensors[p.dq[i]]
                    ranges[i] = int_limits(t.bits, t.signed)
                names.append(i)
        made = _fast(sim, step, args, result, names, [ranges[n] for n in names], st, slot)
        fn, rng = made if made is not None else (_generic(sim, step, args, names, st), None)
        outs = tuple(step.outputs) if step.op == "Split" else (step.outputs[0],)
        ops.append((fn, tuple(names), outs))
        for o in outs:
            ranges[o] = rng
    read_items, src = tuple(reads.items()), layer.source
    if len(ops) == 1 and len(read_items) == 1 and ops[0][1] == (read_items[0][0],) and ops[0][2] == (src,):
        fn, tensor = ops[0][0], read_items[0][1]  # one step of one input (most layers): no environment
        return (lambda ints: fn(ints[tensor])), value, ranges.get(src)

    def evaluate(ints: dict) -> np.ndarray:
        e = {d: ints[s] for d, s in read_items}
        for fn, ins, outs in ops:
            r = fn(*[e[i] for i in ins])
            if len(outs) == 1:
                e[outs[0]] = r
            else:
                e.update(zip(outs, r))
        return e[src]

    return evaluate, value, ranges.get(src)


def _generic(sim, step, args: list, names: list[str], st) -> Callable:
    """The step's generic kernel on the plan's values, with the trace's shifts and divisors."""
    dyn = [j for j, (i, a) in enumerate(zip(step.inputs, args)) if i in names and isinstance(a, Fixed)]
    metas = list(args)
    mac = step.op in MAC_OPS

    def fn(*vs: np.ndarray) -> Any:
        call = list(metas)
        for j, v in zip(dyn, vs):
            m = metas[j]
            call[j] = Fixed(v if v.dtype.kind in "iu" else v.astype(np.int64), m.shift, m.div)
        r = sim._step(step, call)
        if mac:
            r = sim._check_acc(r, st)
        return [x.v for x in r] if isinstance(r, list) else r.v

    return fn


def _fast(sim, step, args: list, result: Any, names: list[str], rngs: list, st,
          slot: int) -> tuple[Callable, Any] | None:
    """A compiled form of one step (the ``slot``-th of its layer): ``(fn(*values), range of its result)``, or None."""
    op = step.op
    if not isinstance(result, Fixed) or step.domain not in ("", "ai.onnx"):
        return None
    if op in MAC_OPS:
        if len(names) != 1 or step.inputs[0] != names[0]:
            return None

        def on_acc(acc: np.ndarray) -> None:
            st.acc_max = max(st.acc_max, int(acc.max()), -int(acc.min()))

        return mac_step(step, args, result, rngs[0], sim.acc_bits, on_acc, sim._scratch.at(slot))
    if op in ("Add", "Sum", "Sub", "Concat"):
        return _sum(step, args, result, names, rngs)
    if op == "Mul" and len(names) == 2 and all(r is not None for r in rngs):
        (a, b), (c, d) = rngs
        corners = (a * c, a * d, b * c, b * d)
        if max(-min(corners), max(corners)) < 1 << 31:  # int32 products stay exact
            return np.multiply, (min(corners), max(corners))
    if len(names) != 1 or step.inputs[0] != names[0]:
        return None
    x, rest, rng = args[0], args[1:], rngs[0]
    if op == "Relu":
        return (lambda v: np.maximum(v, 0)), (None if rng is None else (max(rng[0], 0), max(rng[1], 0)))
    if op == "Clip":
        return _clip(step, x, rest, rng)
    if op in ("Identity", "Dropout"):
        return (lambda v: v), rng
    if op == "MaxPool" and len([o for o in step.outputs if o]) == 1:
        attrs = step.attrs
        return (lambda v: K.max_pool(v, attrs)), rng
    if op in ("GlobalAveragePool", "ReduceMean", "AveragePool"):
        return _average(step, x, result, rng)
    if op in RESHAPES:
        shape = result.v.shape
        return (lambda v: v.reshape(shape)), rng
    if op == "Transpose":
        perm = step.attrs.get("perm")
        return (lambda v: np.transpose(v, perm)), rng
    if op == "Slice":
        index = M.slice_index(x.v.shape, step.attrs, rest)
        return (lambda v: v[index]), rng
    if op in GATHERS:
        where = M.shape_op(step, np.arange(x.v.size, dtype=np.intp).reshape(x.v.shape), rest)
        return (lambda v: np.take(v, where)), rng
    return None


def _average(step, x: Fixed, result: Fixed, rng: Range | None) -> tuple[Callable, Any] | None:
    """The sums of an average (its count is the trace's divisor, applied by the output quantizer)."""
    if rng is None or x.div.size != 1 or int(x.div) != 1 or len([i for i in step.inputs if i]) > 1:
        return None
    attrs, nd = step.attrs, x.v.ndim
    if step.op == "AveragePool":
        count = int(np.prod(attrs["kernel_shape"]))
        return (lambda v: K.avg_pool_sums(_ints(v), attrs)[0]), (rng[0] * count, rng[1] * count)
    if step.op == "GlobalAveragePool":
        axes, keep = tuple(range(2, nd)), True
    else:
        given = attrs.get("axes")
        axes = tuple(a % nd for a in given) if given is not None else tuple(range(nd))
        keep = bool(attrs.get("keepdims", 1))
    count = int(np.prod([x.v.shape[a] for a in axes]))
    if result.v.shape != x.v.sum(axis=axes, keepdims=keep).shape:
        return None
    return (lambda v: _ints(v).sum(axis=axes, keepdims=keep)), (rng[0] * count, rng[1] * count)


def _ints(v: np.ndarray) -> np.ndarray:
    """An accumulator in float (a compiled product's) as int64: sums of many stay exact."""
    return v if v.dtype.kind in "iu" else v.astype(np.int64)


def _clip(step, x: Fixed, rest: list, rng: Range | None) -> tuple[Callable, Any] | None:
    if rng is None or x.shift.size != 1 or x.div.size != 1:
        return None
    lo = step.attrs.get("min") if (not rest or rest[0] is None) else rest[0]
    hi = step.attrs.get("max") if (len(rest) < 2 or rest[1] is None) else rest[1]
    unit = float(np.ldexp(1.0, int(x.shift)) * int(x.div))
    low = rng[0] if lo is None else max(rng[0], min(rng[1], int(np.ceil(float(lo) * unit))))
    high = rng[1] if hi is None else min(rng[1], max(rng[0], int(np.floor(float(hi) * unit))))
    if low > high:
        return None
    return (lambda v: np.clip(v, low, high)), (low, high)


def _sum(step, args: list, result: Fixed, names: list[str], rngs: list) -> tuple[Callable, Any] | None:
    """Add/Sum/Sub/Concat of per-tensor values at the trace's shifts: exact left shifts by constants."""
    if not all(isinstance(a, Fixed) and a.shift.size == 1 and a.undivided for a in args) or result.shift.size != 1:
        return None
    if step.op == "Sub" and len(args) != 2:
        return None
    common = int(result.shift)
    terms, spans, it = [], [], iter(rngs)
    for i, a in zip(step.inputs, args):
        mult = 1 << (common - int(a.shift))
        if i in names:
            r = next(it)
            if r is None:
                return None
            terms.append((None, mult))
        else:
            terms.append((a.v.astype(np.int64), mult))
            r = (int(a.v.min(initial=0)), int(a.v.max(initial=0)))
        spans.append((r[0] * mult, r[1] * mult))
    if step.op == "Concat":
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    elif step.op == "Sub":
        lo, hi = spans[0][0] - spans[1][1], spans[0][1] - spans[1][0]
    else:
        lo, hi = sum(s[0] for s in spans), sum(s[1] for s in spans)
    if max(-lo, hi) >= 1 << 31:
        return None
    axis = step.attrs.get("axis", 0)
    if step.op in ("Add", "Sum") and len(terms) == 2 and all(c is None for c, _ in terms):
        (_, ma), (_, mb) = terms  # the usual residual add: two tensors
        if ma == mb == 1:
            return np.add, (lo, hi)
        return (lambda a, b: a * ma + b * mb), (lo, hi)

    def fn(*vs: np.ndarray) -> np.ndarray:
        it = iter(vs)
        parts = [next(it) if c is None else c for c, _ in terms]
        parts = [v if m == 1 else v * m for v, (_, m) in zip(parts, terms)]
        if step.op == "Concat":
            return np.concatenate(parts, axis=axis)
        if step.op == "Sub":
            return parts[0] - parts[1]
        total = parts[0] + parts[1] if len(parts) > 1 else parts[0]
        for v in parts[2:]:
            total = total + v
        return total

    return fn, (lo, hi)


def _requant(k: np.ndarray, div: np.ndarray, rng: Range | None, out, rounding: str, st) -> Callable:
    """The layer's output quantizer, compiled: in float where the value's range keeps it exact (see
    :func:`_float_requant`), else :func:`~.rounding.requantize_saturate`."""
    bits, signed = out.bits, out.signed
    fast = None
    if rng is not None and max(-rng[0], rng[1]) < F32_EXACT and rounding in ("half-even", "floor"):
        fast = _float_requant(k, div, rng, int_limits(bits, signed), rounding, st)
    if fast is not None:
        return fast

    def generic(v: np.ndarray) -> np.ndarray:
        q, n = requantize_saturate(v, k, rounding, div, bits, signed)
        st.saturated += n
        st.elements += q.size
        return q

    return generic


def _float_requant(k: np.ndarray, div: np.ndarray, rng: Range, limits: Range, rounding: str, st) -> Callable | None:
    """``round(v / (2**k * div))`` of integers ``|v| < 2**24``, exactly, in float: without a divisor
    ``v * 2**-k`` in float32 (a power of two: exact) and its rint/floor; with one (an average's count)
    ``v / D`` in float64, ``D = 2**k * div < 2**28``: a quotient that is not a tie (or an integer) lies
    at least ``1/(2D) > 2**-29`` from one, far beyond float64's error on values below ``2**24``, so
    rint/floor of it are exact. No saturation check where the range cannot leave the output type."""
    lo, hi = limits
    plain = div.size == 1 and int(div.reshape(-1)[0]) == 1
    if plain:
        scale = np.ldexp(np.float32(1.0), -k).astype(np.float32)
        ends = rng[0] * scale, rng[1] * scale
    else:
        den = (np.ldexp(1.0, k) * div).astype(np.float64)
        if float(den.max()) >= 1 << 28 or float(den.min()) <= 0:
            return None
        ends = rng[0] / den, rng[1] / den
    may_saturate = float(np.min(ends[0])) < lo or float(np.max(ends[1])) > hi
    shifts = not plain or bool(np.any(k != 0))
    rnd = np.rint if rounding == "half-even" else np.floor

    def run(v: np.ndarray) -> np.ndarray:
        if not shifts:
            f = v
        else:
            f = np.multiply(v, scale, dtype=np.float32) if plain else np.divide(v, den, dtype=np.float64)
            rnd(f, out=f)
        st.elements += f.size
        if may_saturate and f.size:
            fmin, fmax = f.min(), f.max()
            if fmin < lo or fmax > hi:
                st.saturated += int(np.count_nonzero(f < lo)) + int(np.count_nonzero(f > hi))
                f = np.clip(f, lo, hi)
        return f.astype(np.int32)

    return run
