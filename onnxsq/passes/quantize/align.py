"""align: a free scale per group of activation tensors, carried by the weights around them (after calibration).

Math: a power-of-two scale wastes up to half of a tensor's codes (a range just above ``2**k`` takes the
step of ``2**(k+1)``): a free scale, as onnxruntime's, places the range on the codes exactly. Every tensor of
a *domain* (:mod:`.align_domain`) is scaled by one ``a > 0``: its sources (Conv, ConvTranspose, Gemm, MatMul:
weight and bias times ``a``; LayerNormalization: scale and bias times ``a``; a constant an ``Add``/``Concat``
of the domain reads) make ``a`` times their
values, the ops inside it are positively homogeneous or linear in every input of the domain (ReLU, LeakyReLU,
PReLU, pooling, reshapes, Resize, Slice, ``Add``/``Sub``/``Concat``/``Max`` of domain tensors, a product with
a constant), and its sinks (the same layers' data input) divide their weights by ``a`` (a LayerNormalization
reading it takes ``a**2`` times its epsilon: ``LN(a x)`` is then ``LN(x)``, a transformer's residual stream
aligned): the network computes
the same (up to one float rounding per weight), while each tensor is quantized at ``2**-shift / a`` in its
old units -- a free scale, every Q/DQ scale in the model still a power of two and every zero point 0. A graph
output in a domain is handed back by a product with ``1 / a`` after its last DequantizeLinear (the host's
conversion to float). A Softmax reading it (float in every scheme here) reads it through a product by
``1 / a``, and the domain's factor and shift are weighed by that Softmax's own error on the samples its
shift is chosen on (:func:`.softmax_range.softmax_nsr`; the shift measured again once aligned): the
histogram's error would clip the rare largest logits that decide a row. With ``align_islands``, float
islands (HardSwish, SiLU, Sigmoid, ...) carry the factor too, as a product of their own inside the island.

``a`` is chosen per domain among ``2**(i/8)``, ``i = 0..7``, by the least sum of noise-to-signal ratios of
what it moves: each quantized tensor's expected rounding and clipping error on its calibration histogram (the
``auto``/``mse`` estimators' error at step ``2**-shift / a``, through the reader's function where
:mod:`.through` applies; a shared-scale group at its coarsest member's shift) over its mean square, and each
weight's rounding error over its power, quantized at that factor. It is kept where it gains at least
``MIN_GAIN_DB``; the statistics are then rescaled (histograms rebinned) and the shifts chosen by the usual
estimators. That error is the float tensor's own rounding: the error arriving from the layers before can make
a tighter range cost more than it saves, so with ``align_check`` (``--effort max``) and report samples the
whole model is checked against the unaligned one (:func:`checked`) and the better kept.

Refused, with the reason in the report's ``scale_alignment``: a domain holding a graph input, a tensor made or
read by another op (HardSwish, SiLU, Sigmoid, Clip, a product of two activations without ``align_islands``),
a weight shared with a layer outside it or in another role, a constant shared with another node, given
parameters, a function-range tensor (a Softmax-read one with ``integer_only`` / ``ort_kernels``), a pooled
head's tensor (its range has headroom for the
draws calibration lacks, :mod:`.pooled`: a factor fitted to those few draws takes it back), a shared-scale
group that reaches outside it; and the
whole step where a parameters file is read or written (it holds shifts, not the factors).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...calibration import pow2
from ...calibration.stats import TensorStats, least_error, least_error_format, mse_errors
from ...params import ALIGNED_SUFFIX
from .align_domain import Domain, find_domain, unfit, weight_powers
from .params import constant_shift
from .softmax_range import softmax_nsr
from .through import through_errors

log = logging.getLogger(__name__)

FACTORS = tuple(2.0 ** (i / 8) for i in range(8))
MIN_GAIN_DB = 0.1  # below this the rounding of every weight it touches is all that changes


def align_scales(ctx: Any, graph: gs.Graph, float_model: Any, float_weights: dict[str, np.ndarray],
                 params_file: bool = False) -> bool:
    """Align every domain of ``graph`` whose factor gains (``ctx``: a ``QuantizeContext`` with its
    statistics; nothing unless ``ctx.cfg.align_scales``); rewrites the weights in ``graph`` and
    ``ctx.consts`` and the statistics; True where any changed (the float model to run is then ``graph``'s
    again); none where a parameters file is read or written (``params_file``). ``ctx.unaligned`` keeps the
    float model, weights and statistics from before: quantizing again from these statistics (:func:`checked`,
    :mod:`.target`) starts from the unaligned model."""
    if not ctx.cfg.align_scales or not ctx.stats:
        return False
    if params_file or ctx.given:  # a parameters file holds shifts, not the factors the weights would carry
        why = "off: a parameters file is read or written (it holds shifts, not the factors the weights carry)"
        ctx.report.summary.update(scales_aligned=0, scale_alignment=why)
        if ctx.cfg.align_islands:  # asked for by name
            ctx.report.warnings.append(f"--align-islands: scale alignment {why}")
        return False
    ctx.unaligned = (float_model, float_weights, dict(ctx.stats), dict(ctx.means))
    ctx.weight_axes = {u.weight: u.axis for u in ctx.plan.weights}
    tensors, outputs = graph.tensors(), {t.name for t in graph.outputs}
    planned, seen = set(ctx.plan.activations), set()
    done, refused = [], []
    for t in ctx.plan.activations:
        if t in seen or t not in tensors:
            continue
        dom = find_domain(tensors[t], ctx, outputs)
        seen.update(dom.tensors)
        mine = [x for x in dom.tensors if x in planned]
        why = dom.why[0] if dom.why else unfit(ctx, dom, mine)
        entry = {"tensor": mine[0], "tensors": len(mine)}
        if why:
            refused.append({**entry, "reason": why})
            continue
        factor, gain = choose_factor(ctx, mine, dom)
        if factor == 1.0:
            refused.append({**entry, "reason": f"no factor gains {MIN_GAIN_DB} dB (best {gain:.2f})"})
            continue
        _apply(ctx, graph, tensors, dom, factor)
        done.append({**entry, "factor": round(factor, 6), "gain_db": round(gain, 3)})
    ctx.report.summary["scales_aligned"] = len(done)
    ctx.report.summary["scale_alignment"] = {"aligned": done, "refused": refused}
    log.info("align: %d domain(s) aligned, %d refused", len(done), len(refused))
    if not done:
        ctx.unaligned = None
    return bool(done)


def checked(model: Any, kept: list[dict], cfg: Any, args: tuple, first: tuple, stats: Any) -> tuple:
    """``first`` (the aligned model and its report), or the model quantized again without alignment from the
    same statistics where its output SQNR on the report samples is higher (:mod:`.recheck`; ``stats``: the
    unaligned statistics, None when there is nothing to check: nothing aligned, or no report samples). ``args``:
    the pass's params, progress and params_out. The report's ``scale_alignment_check`` says what each scored."""
    if stats is None:
        return first
    from .recheck import keep_better, rerun
    from .report import rerun_config

    second = rerun(model, kept, dataclasses.replace(rerun_config(cfg, kept), align_scales=False), args, stats,
                   "unaligned")
    q, r, check = keep_better(first, second, ("aligned", "unaligned"), args[2])
    if check["kept"] == "unaligned":
        r.summary["scale_alignment"] = first[1].summary["scale_alignment"]
    r.summary["scale_alignment_check"] = check
    return q, r


def choose_factor(ctx: Any, tensors: list[str], dom: Domain | None = None) -> tuple[float, float]:
    """(factor, gain in dB against factor 1 of the summed noise-to-signal ratios of what the factor moves:
    each quantized tensor's expected rounding and clipping error on its histogram over its power, and each
    weight's rounding error over its power, as the weight is quantized at that factor): 1.0 below
    ``MIN_GAIN_DB``. A shared-scale group takes its coarsest member's shift (as :mod:`.params` resolves it),
    so its members' errors are counted at that shift."""
    groups: dict[str, list[str]] = {}
    for t in tensors:
        groups.setdefault(ctx.plan.groups.get(t, t), []).append(t)
    weights = {k: v for k, v in weight_powers(dom).items() if v} if dom is not None else {}
    errors = [sum(_group_error(ctx, root, f) for root in groups) +
              sum(_weight_nsr(ctx, w, f ** p) for w, p in weights.items()) for f in FACTORS]
    base, k = errors[0], int(np.argmin(errors))
    gain = 10.0 * math.log10(base / errors[k]) if errors[k] > 0 and base > 0 else 0.0
    return (FACTORS[k], gain) if gain >= MIN_GAIN_DB else (1.0, gain)


def _weight_nsr(ctx: Any, name: str, scale: float) -> float:
    """Expected rounding noise over power of weight ``name`` times ``scale`` at its fitting shifts (per
    channel where :mod:`.params` quantizes it so): ``sum_c n_c step_c**2 / 12 / sum w**2``, from each channel's
    largest magnitude (computed once per weight; the MSE shift's clipping is left out)."""
    from .params import pair_safe_bits

    if name not in ctx.weight_axes:
        return 0.0
    if name not in ctx.weight_mags:
        w = ctx.consts[name].astype(np.float64)
        axis = ctx.weight_axes[name]
        reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None and w.ndim else None
        mags = np.abs(w).max(axis=reduce) if w.size else np.zeros(1)
        ctx.weight_mags[name] = (np.atleast_1d(mags), w.size / max(np.size(mags), 1), float(np.square(w).sum()))
    mags, per, power = ctx.weight_mags[name]
    if power == 0:
        return 0.0
    bits = ctx.wide.get(name, pair_safe_bits(ctx, name))
    shift = np.asarray(pow2.fit_shift(-mags * scale, mags * scale, bits, True, symmetric=True))
    return float(per * np.sum(np.ldexp(1.0, -2 * shift.astype(np.int64))) / 12.0) / (power * scale * scale)


def _group_error(ctx: Any, root: str, factor: float) -> float:
    members = ctx.plan.members(root) or [root]
    method, formats, errors = ctx.cfg.method, {}, {}
    softmax = {}
    for m in members:
        bits = ctx.wide.get(m, ctx.cfg.bits)
        if m in ctx.softmax_values and (found := softmax_nsr(ctx, m, factor)) is not None:
            softmax[m] = found  # the Softmax's error, as its shift is chosen (.softmax_range)
            formats[m] = (found[0], not ctx.stats[m].nonnegative)
        elif m in ctx.through:
            formats[m] = _through(ctx, m, bits, factor, errors)[0]
        elif m in ctx.stats:
            formats[m] = tensor_format(ctx.stats[m], bits, factor, method, errors.setdefault(m, {}))
        else:  # a constant member (quantized from its values): its fitting shift
            v = ctx.consts[m].astype(np.float64) * factor
            signed = bool(v.size and v.min() < 0)
            formats[m] = (constant_shift(v, bits, signed)[0], signed)
    shift, signed = min(s for s, _ in formats.values()), any(g for _, g in formats.values())
    total = 0.0
    for m in (m for m in members if m in ctx.stats):
        if m in softmax:  # already a ratio to the Softmax output's power
            total += softmax[m][1] if shift == softmax[m][0] else softmax_nsr(ctx, m, factor, shift)[1]
            continue
        bits = ctx.wide.get(m, ctx.cfg.bits)
        err = (_through(ctx, m, bits, factor, errors, signed, shift)[1] if m in ctx.through else
               error_at(ctx.stats[m], bits, signed, shift, factor, method, errors[m]))
        total += err / _power(ctx, m)
    return total


def _power(ctx: Any, t: str) -> float:
    """Mean square of ``t`` (of its readers' function of it, for a through tensor) on its histogram."""
    st = ctx.stats[t]
    if not st.histogram:
        return max(st.min * st.min, st.max * st.max, 1e-30) / 3.0
    c = (np.arange(len(st.hist_pos)) + 0.5) * st.bin_width()
    f = ctx.through.get(t, lambda z: z)
    total = float((st.hist_pos * np.square(f(c))).sum() + (st.hist_neg * np.square(f(-c))).sum())
    return max(total / max(float(st.hist_pos.sum() + st.hist_neg.sum()), 1.0), 1e-30)


def _through(ctx: Any, t: str, bits: int, factor: float, cache: dict, signed: bool | None = None,
             shift: int | None = None) -> tuple[tuple[int, bool], float]:
    """((shift, signed), error) of ``factor * t`` through the function its readers compute (:mod:`.through`),
    in that function's units: the estimator's format, or the error at the ``signed``/``shift`` given
    (``cache``: the rescaled statistics and error lists, kept per tensor across the two calls)."""
    mine = cache.setdefault(t, {})
    if "stats" not in mine:
        f = ctx.through[t]
        mine["stats"], mine["f"] = ctx.stats[t].scaled(factor), (lambda z: f(z / factor)) if factor != 1.0 else f
    st, g = mine["stats"], mine["f"]
    if shift is None:
        shift, signed = least_error_format(st.nonnegative, lambda sign: _cached(
            mine, sign, lambda: through_errors(st, bits, sign, g)))
    errors = dict(_cached(mine, signed, lambda: through_errors(st, bits, signed, g)))
    step = math.ldexp(1.0, -shift)
    return (shift, signed), errors.get(shift, float(st.count) * step * step / 12.0)


def _cached(cache: dict, signed: bool, compute: Any) -> list[tuple[int, float]]:
    if signed not in cache:
        cache[signed] = compute()
    return cache[signed]


def tensor_format(st: TensorStats, bits: int, factor: float, method: str, cache: dict | None = None
                  ) -> tuple[int, bool]:
    """(shift, signed) the estimator takes for ``factor * x`` (``cache``: error lists per signedness)."""
    cache = {} if cache is None else cache
    if st.histogram and method in ("mse", "auto"):
        def errors(signed: bool) -> list[tuple[int, float]]:
            return _cached(cache, signed, lambda: mse_errors(st, bits, signed, factor=factor))

        if method == "auto":
            return least_error_format(st.nonnegative, errors)
        signed = not st.nonnegative
        return least_error(errors(signed))[0], signed
    signed = not st.nonnegative
    lo, hi = (min(st.min, 0.0) if signed else 0.0) * factor, max(st.max, 0.0) * factor
    return int(pow2.fit_shift(lo, hi, bits, signed)), signed


def error_at(st: TensorStats, bits: int, signed: bool, shift: int, factor: float, method: str,
             cache: dict | None = None) -> float:
    """Expected squared quantization error (in ``x``'s units) of ``factor * x`` at ``shift`` (``cache``: as
    :func:`tensor_format`'s)."""
    step = math.ldexp(1.0, -shift) / factor
    if st.histogram and method in ("mse", "auto"):
        errors = dict(_cached({} if cache is None else cache, signed,
                              lambda: mse_errors(st, bits, signed, factor=factor)))
        if shift in errors:
            return errors[shift]
        return max(float(st.hist_pos.sum() + st.hist_neg.sum() - st.zeros), 0.0) * step * step / 12.0
    return st.count * step * step / 12.0


def tensor_error(st: TensorStats, bits: int, factor: float, method: str) -> float:
    """Expected squared quantization error (in ``x``'s units) of ``factor * x`` at its best shift."""
    cache: dict = {}
    shift, signed = tensor_format(st, bits, factor, method, cache)
    return error_at(st, bits, signed, shift, factor, method, cache)


def _apply(ctx: Any, graph: gs.Graph, tensors: dict[str, gs.Tensor], dom: Domain, factor: float) -> None:
    """``dom`` times ``factor``; ``tensors``: the graph's before any domain was applied (the names read here;
    the products added have names of their own)."""

    def scale(name: str, by: float) -> None:
        tensors[name].values = ctx.consts[name] = np.asarray(ctx.consts[name].astype(np.float64) * by, np.float32)

    for name, power in weight_powers(dom).items():  # a layer that both reads and makes the domain: as it was
        if power:
            scale(name, factor ** power)
    for name in dom.constants:
        scale(name, factor)
    for node in dom.norms:  # (a x - a mean) / sqrt(a**2 var + a**2 eps): the same normalized values
        node.attrs["epsilon"] = float(np.float32(float(node.attrs.get("epsilon", 1e-5)) * factor * factor))
    for name in dom.made:
        _product_after(graph, ctx, tensors, tensors[name], factor)
    for name, readers in dom.fed.items():
        _product_before(graph, ctx, tensors, tensors[name], readers, 1.0 / factor)
        if name in ctx.through:  # its readers now compute f(x / factor)
            ctx.through[name] = (lambda f: lambda z: f(z / factor))(ctx.through[name])
    if dom.made or dom.fed:
        graph.toposort()
    for name in dom.outputs:
        ctx.outputs_scaled[name] = 1.0 / factor
    for t in dom.tensors:
        if t in ctx.softmax:  # its shift is chosen again on the aligned values (.softmax_range)
            ctx.softmax_factor[t] = factor
        if t in ctx.stats:
            ctx.stats[t] = ctx.stats[t].scaled(factor)
        if t in ctx.means:
            ctx.means[t] = ctx.means[t].scaled(factor)


def _factor_const(names: dict[str, gs.Tensor], ctx: Any, base: str, value: float) -> gs.Constant:
    """A scalar constant named after ``base``, free in ``names`` and ``ctx.consts`` (where it is added)."""
    name, i = f"{base}/align_factor", 0
    while name in names or name in ctx.consts:
        i += 1
        name = f"{base}/align_factor_{i}"
    c = gs.Constant(name, np.array(value, np.float32))
    ctx.consts[name] = c.values
    return c


def _product_after(graph: gs.Graph, ctx: Any, names: dict[str, gs.Tensor], t: gs.Variable, factor: float) -> None:
    """``t`` becomes ``factor * (what made it)``: the maker writes a new tensor, a Mul by the factor writes ``t``."""
    maker = t.inputs[0]
    inner = gs.Variable(f"{t.name}/unaligned", dtype=t.dtype, shape=t.shape)
    maker.outputs[maker.outputs.index(t)] = inner
    graph.nodes.append(gs.Node("Mul", f"{t.name}/align", inputs=[inner, _factor_const(names, ctx, t.name, factor)],
                               outputs=[t]))


def _product_before(graph: gs.Graph, ctx: Any, names: dict[str, gs.Tensor], t: gs.Variable, readers: list[gs.Node],
                    factor: float) -> None:
    """``readers`` read ``factor * t`` (a Mul of their own) instead of ``t``."""
    scaled = gs.Variable(f"{t.name}/aligned_in", dtype=t.dtype, shape=t.shape)
    graph.nodes.append(gs.Node("Mul", f"{t.name}/align_in", inputs=[t, _factor_const(names, ctx, t.name, factor)],
                               outputs=[scaled]))
    for r in {id(r): r for r in readers}.values():
        for i, x in enumerate(list(r.inputs)):
            if x is t:
                r.inputs[i] = scaled


def unscale_outputs(graph: gs.Graph, ctx: Any) -> None:
    """The graph outputs of aligned domains (quantized, dequantized: ``factor`` times the float model's) as the
    float model computes them: a Mul by ``1 / factor`` after the last DequantizeLinear writes each (the host's
    conversion to float; every quantization scale stays a power of two). Called once QDQ is in."""
    if not ctx.outputs_scaled:
        return
    tensors = graph.tensors()
    for name, inv in ctx.outputs_scaled.items():
        t = tensors[name]
        t.name = f"{name}{ALIGNED_SUFFIX}"
        out = gs.Variable(name, dtype=t.dtype, shape=t.shape)
        graph.nodes.append(gs.Node("Mul", f"{name}/unalign", inputs=[t, _factor_const(tensors, ctx, name, inv)],
                                   outputs=[out]))
        graph.outputs[next(i for i, o in enumerate(graph.outputs) if o is t)] = out
