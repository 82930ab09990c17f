"""Parameters of every tensor :func:`onnxsq.passes.quantize.quantize` plans: shared-scale groups of
activations (the coarsest member's shift, so every member fits), weights (MSE shift by default), and
int32 biases at ``scale_in * scale_w`` with bias correction. Given parameters (a parameters file, QAT)
take precedence; a given shift that a shared-scale group must change is warned about by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...calibration import pow2
from ...calibration.stats import ChannelMean, TensorStats, choose_shift, mse_format
from ...errors import InvalidOptionError
from ...params import TensorQuant
from ...report import Report
from .bias import correct_bias
from .config import QuantizeConfig
from .insert import carrier_dtype
from .placement_plan import Plan
from .through import through_format

SIXTEEN_BIT_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16/uint16 from opset 21


def check_bits(bits: int, weight_bits: int, opset: int, *, flag: str = "--bits") -> None:
    """Refuse a bit width the model's opset cannot hold (more than 8 bits need opset 21); one rule for
    quantize and QAT."""
    wide = max(bits, weight_bits)
    if wide > 8 and opset < SIXTEEN_BIT_OPSET:
        raise InvalidOptionError(f"{flag} {wide} needs 16-bit QuantizeLinear, which ONNX has from opset "
                                 f"{SIXTEEN_BIT_OPSET}; this model is opset {opset} (use {flag} 8 or less, or "
                                 f"convert the model to opset {SIXTEEN_BIT_OPSET} first)")


@dataclass
class QuantizeContext:
    cfg: QuantizeConfig
    report: Report
    plan: Plan
    consts: dict[str, np.ndarray]
    stats: dict[str, TensorStats] = field(default_factory=dict)
    given: dict[str, TensorQuant] = field(default_factory=dict)
    means: dict[str, ChannelMean] = field(default_factory=dict)  # inputs of bias-corrected layers
    corrected: dict[str, np.ndarray] = field(default_factory=dict)  # bias name → corrected float values
    qweights: dict[str, np.ndarray] = field(default_factory=dict)  # weight name → its integers (computed once)
    hessians: dict[str, Any] = field(default_factory=dict)  # weight → per-group E[x x^T], or why none (.rounding)
    gptq_rows: dict[str, np.ndarray] = field(default_factory=dict)  # weight → its output channels GPTQ rounded
    wide: dict[str, int] = field(default_factory=dict)  # tensor → bits where a 16-bit layer widens it (.wide)
    through: dict[str, Any] = field(default_factory=dict)  # tensor → the function its readers compute (.through)
    softmax: dict[str, Any] = field(default_factory=dict)  # tensor → the Softmax that reads it (.softmax_range)
    softmax_shift: dict[str, int] = field(default_factory=dict)  # its shift by that Softmax's error
    softmax_factor: dict[str, float] = field(default_factory=dict)  # Softmax-read tensor -> its .align factor
    softmax_values: dict[str, Any] = field(default_factory=dict)  # tensor -> its .softmax_range.Measured
    unaligned: Any = None  # (float model, weights, statistics, means) before .align rescaled them
    outputs_scaled: dict[str, float] = field(default_factory=dict)  # graph output -> 1 / its .align factor
    weight_axes: dict[str, Any] = field(default_factory=dict)  # weight -> its per-channel axis (.align)
    weight_mags: dict[str, Any] = field(default_factory=dict)  # weight -> per-channel |w| max, count, power (.align)
    headroom: dict[str, int] = field(default_factory=dict)  # tensor -> bits its shift is lowered by (.pooled)


def known_clipped(ctx: QuantizeContext, tparams: dict[str, TensorQuant]) -> dict[str, float]:
    """Clipped fractions over every calibration sample, where the statistics tell (the report then
    does not count them again)."""
    out = {}
    for t, st in ctx.stats.items():
        p = tparams.get(t)
        if p is None or t in ctx.given or p.kind != "activation":
            continue
        qmin, qmax = pow2.int_range(p.bits, p.signed)
        frac = st.clipped_fraction((qmin - 0.5) * float(p.scale), (qmax + 0.5) * float(p.scale))
        if frac is not None:
            out[t] = frac
    return out


def _group_signed(ctx: QuantizeContext, members: list[str], bits: int) -> bool:
    for m in members:
        if ctx.plan.bounded.get(m) and m not in ctx.given:  # Tanh: signed by its range (-1, 1)
            return True
        if m in ctx.given:
            if ctx.given[m].signed:
                return True
        elif m in ctx.consts:
            if float(np.min(ctx.consts[m])) < 0:
                return True
        elif m in ctx.stats and _wants_signed(ctx, ctx.stats[m], bits, m):
            return True
    return False


def _wants_signed(ctx: QuantizeContext, st: TensorStats, bits: int, st_name: str = "") -> bool:
    """Signed when the tensor has negatives; with ``auto``, only when a signed format's expected error
    is the lower one (an unsigned format may clip a few small negatives: HardSwish, SiLU)."""
    if st.nonnegative:
        return False
    if ctx.cfg.method == "auto" and st.histogram:
        if st_name in ctx.softmax:  # read by Softmax: chosen by its error, in the format that holds negatives
            return True
        f = ctx.through.get(st_name)
        return through_format(st, bits, f)[1] if f is not None else mse_format(st, bits)[1]
    return True


def constant_shift(values: np.ndarray, bits: int, signed: bool) -> tuple[int, tuple[float, float]]:
    """The shift at which a constant member of a shared-scale group fits (its range stretched to hold 0),
    and that range: the one rule quantize and QAT (:mod:`onnxsq.training.qat`) both apply."""
    v = values.astype(np.float64)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    return int(pow2.fit_shift(min(lo, 0.0) if signed else 0.0, max(hi, 0.0), bits, signed)), (lo, hi)


def _member_shift(ctx: QuantizeContext, m: str, signed: bool, bits: int) -> tuple[int, tuple[float, float] | None, str]:
    if m in ctx.given:
        g = ctx.given[m]
        return int(np.min(g.shift_array)), g.observed_range, g.estimator or "params file"
    if m in ctx.plan.bounded:  # Sigmoid, Tanh, ...: the function's range, not calibration (|y| <= 1)
        st = ctx.stats.get(m)
        return bits - int(signed), (st.min, st.max) if st is not None and st.batches else None, "function range"
    if m in ctx.consts:
        shift, rng = constant_shift(ctx.consts[m], bits, signed)
        return shift, rng, "values"
    st = ctx.stats.get(m)
    if st is None or st.batches == 0:
        return bits - 1, None, "no data"
    if m in ctx.softmax and ctx.cfg.method in ("mse", "auto") and bits == ctx.cfg.bits:  # (.softmax_range)
        if m in ctx.softmax_shift:
            return ctx.softmax_shift[m], (st.min, st.max), "softmax error (read by Softmax)"
        shift = pow2.fit_shift(min(st.min, 0.0) if signed else 0.0, max(st.max, 0.0), bits, signed)
        return int(shift), (st.min, st.max), "minmax (read by Softmax, no samples)"
    if m in ctx.through and ctx.cfg.method in ("mse", "auto") and st.histogram:  # the error its readers see
        shift = through_format(st, bits, ctx.through[m], signed)[0]
        return shift, (st.min, st.max), f"{ctx.cfg.method} (through reader)"
    shift, _ = choose_shift(st, ctx.cfg.method, bits, percentile=ctx.cfg.percentile, signed=signed)
    return shift, (st.min, st.max), ctx.cfg.method


def _with_headroom(ctx: QuantizeContext, m: str, found: tuple[int, Any, str]) -> tuple[int, Any, str]:
    """``found`` with ``m``'s pooled-head headroom (.pooled; never a given tensor) taken off its shift."""
    bits = ctx.headroom.get(m, 0)
    if not bits:
        return found
    shift, rng, how = found
    return shift - bits, rng, f"{how} + {bits} bit{'s' if bits > 1 else ''} (pooled head)"


def resolve_params(ctx: QuantizeContext) -> dict[str, TensorQuant]:
    """Every planned tensor's parameters: shared-scale groups, then weights, then int32 biases."""
    plan, cfg, out = ctx.plan, ctx.cfg, {}
    for root in plan.group_roots():
        members = plan.members(root)
        bits = next((ctx.given[m].bits for m in members if m in ctx.given), ctx.wide.get(root, cfg.bits))
        signed = _group_signed(ctx, members, bits)
        found = {m: _with_headroom(ctx, m, _member_shift(ctx, m, signed, bits)) for m in members}
        shift = min(s for s, _, _ in found.values())
        for m, (s, rng, how) in found.items():
            if m in ctx.given and (s != shift or ctx.given[m].signed != signed):
                ctx.report.warnings.append(f"{m}: given shift {s} changed to {shift} (signed={signed}): it shares "
                                           f"one scale with {', '.join(x for x in members if x != m)}")
            out[m] = TensorQuant(m, "activation", bits, signed, shift, None, rng, how)
    axes: dict[str, set] = {}
    for use in plan.weights:
        axes.setdefault(use.weight, set()).add(use.axis)
    for use in plan.weights:
        if use.weight not in out:
            out[use.weight] = _weight_params(ctx, use.weight, next(iter(axes[use.weight])) if len(axes[use.weight]) == 1
                                             else None, _bias_cap(ctx, use, out.get(use.input)))
            _round_weight(ctx, use, out[use.weight])
        if use.bias is not None:
            # GPTQ's channels minimized their error with the input's mean in it: no second correction there
            corr = correct_bias(use, out[use.weight], ctx.consts, ctx.given, ctx.means,
                                ctx.qweights.get(use.weight), skip=ctx.gptq_rows.get(use.weight))
            if corr is not None:
                ctx.corrected[use.bias] = ctx.consts[use.bias]
            out[use.bias] = _bias_params(ctx, use.bias, out[use.input], out[use.weight], use.bias_axis)
            out[use.bias].correction = corr
    return out


def _round_weight(ctx: QuantizeContext, use: Any, p: TensorQuant) -> None:
    """GPTQ rounding of ``use``'s weight where its input statistics were measured (:mod:`.rounding`)."""
    h = ctx.hessians.get(use.weight)
    if h is None or use.weight not in ctx.qweights:
        return
    if isinstance(h, str):
        use.notes.append(f"weight rounding: {h}")
        return
    from .rounding import round_weight

    q, shift, took = round_weight(use, ctx.consts[use.weight], p, h, ctx.qweights[use.weight])
    if not took.any():
        use.notes.append("weight rounding: nearest (GPTQ's rounding was no better on the held-out samples)")
        return
    ctx.qweights[use.weight] = q
    p.shift = shift.tolist() if p.per_channel else int(shift[0])
    p.estimator = "gptq" if took.all() else f"gptq ({int(took.sum())} of {took.size} channels)"
    ctx.gptq_rows[use.weight] = took
    ctx.report.summary["weights_rounded"] = ctx.report.summary.get("weights_rounded", 0) + 1


def _bias_cap(ctx: QuantizeContext, use: Any, x: TensorQuant | None) -> np.ndarray | None:
    """The finest weight shift per output channel at which ``use``'s bias still fits int32 (shifts add:
    ``|b| * 2**(s_in + s_w) < 2**30``, a bit of headroom for bias correction), or None without a bias.
    A channel of near-zero weights would otherwise take a shift its bias cannot follow (saturated int32)."""
    if use.bias is None or x is None or use.bias in ctx.given or use.weight in ctx.given:
        return None
    mag = np.abs(np.asarray(ctx.consts[use.bias], dtype=np.float64)).reshape(-1)
    with np.errstate(divide="ignore"):
        cap = np.floor(np.log2(np.ldexp(1.0, pow2.BIAS_BITS - 2) / mag)) - int(x.shift)
    return np.minimum(cap, pow2.MAX_SHIFT).astype(np.int64)


def pair_safe_applies(cfg: QuantizeConfig) -> bool:
    """Whether ``pair_safe`` decides any weight's bits: 8-bit models with per-channel weights and no
    ``--weight-bits`` (per tensor, one 7-bit shift for a whole weight costs more -- 1.0-2.8 dB on the zoo, in
    onnxruntime's own default session -- than the pairs that saturate there: 8 bits)."""
    return cfg.weight_bits is None and cfg.bits == 8 and cfg.per_channel


def resolve_pair_safe(cfg: QuantizeConfig, report: Report) -> QuantizeConfig:
    """``cfg`` with ``pair_safe`` True or False: auto (None) asks this onnxruntime whether its u8 x s8 pairs
    saturate (:func:`onnxsq.calibration.pairs.pairs_saturate`); the summary says what was chosen and why."""
    if cfg.pair_safe is not None or not pair_safe_applies(cfg):
        return cfg
    from ...calibration.pairs import pairs_saturate

    safe = pairs_saturate()
    report.summary["pair_safe"] = (
        "7-bit paired weights: this onnxruntime's u8 x s8 kernels saturate int16 pairs (x86 without VNNI)"
        if safe else "8-bit weights: this onnxruntime multiplies u8 x s8 exactly (VNNI, or no pairs)")
    return dataclasses.replace(cfg, pair_safe=safe)


PAIR_SAFE_BITS = 7  # |q| <= 63: a pair of u8 x s8 products stays within int16 (2 * 255 * 63 < 2**15)


def pair_safe_bits(ctx: QuantizeContext, name: str) -> int:
    """The bits of weight ``name``: ``--weight-bits`` when given; else with ``pair_safe`` (8-bit models) 7
    where onnxruntime's x86 kernels without VNNI multiply it in u8 x s8 pairs (``vpmaddubsw``), which
    saturate at int16 (Conv, grouped Conv, Gemm, MatMul; not a depthwise Conv's int32 kernel nor a
    ConvTranspose, which runs in float); 8 elsewhere. ``pair_safe`` is resolved (:func:`resolve_pair_safe`)."""
    cfg = ctx.cfg
    if not pair_safe_applies(cfg) or not cfg.pair_safe:
        return cfg.wbits
    w = ctx.consts[name]
    for use in ctx.plan.weights:
        if use.weight != name or use.op == "ConvTranspose":
            continue
        if use.op == "Conv" and int(use.attrs.get("group", 1)) > 1 and w.ndim > 1 and w.shape[1] == 1:
            continue  # depthwise
        return PAIR_SAFE_BITS
    return cfg.wbits


def _weight_params(ctx: QuantizeContext, name: str, axis: int | None, cap: np.ndarray | None = None) -> TensorQuant:
    w = ctx.consts[name]
    rng = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    g = ctx.given.get(name)
    if g is not None:
        if g.per_channel and (g.axis is None or w.ndim == 0 or len(g.shift) != w.shape[g.axis]):
            raise InvalidOptionError(f"parameters for weight {name!r}: {len(g.shift)} shifts do not fit its shape "
                                     f"{list(w.shape)}")
        return TensorQuant(name, "weight", g.bits, True, g.shift, g.axis if g.per_channel else None, rng,
                           g.estimator or "params file")
    bits = ctx.wide.get(name, pair_safe_bits(ctx, name))
    shift = pow2.weight_shift(w, bits, axis=axis, method=ctx.cfg.weight_method)
    if cap is not None:  # a bias per output channel (or one for all): no int32 saturation
        limit = cap if np.ndim(shift) and cap.size == np.size(shift) else cap.min()
        capped = np.minimum(shift, limit)
        lowered = int(np.sum(capped != shift))
        if lowered:
            ctx.report.warnings.append(f"weight {name}: the shift of {lowered} channel(s) lowered so that the bias "
                                       "fits int32")
        shift = capped.astype(np.int64) if np.ndim(shift) else int(capped)
    if w.dtype == np.float32:  # what insert_qdq_graph writes; bias correction reads it too
        ctx.qweights[name] = pow2.quantize(w, shift, bits, True, symmetric=True, axis=axis,
                                           dtype=carrier_dtype(bits, True))
    return TensorQuant(name, "weight", bits, True, shift.tolist() if axis is not None else int(shift),
                       axis, rng, ctx.cfg.weight_method)


def _bias_params(ctx: QuantizeContext, name: str, x: TensorQuant, w: TensorQuant, axis: int | None) -> TensorQuant:
    b = ctx.consts[name]
    shift = pow2.bias_shift(int(x.shift), w.shift_array if w.per_channel else int(w.shift))
    per = isinstance(shift, np.ndarray)
    if per:
        # per-channel weights (from --per-channel or a parameters file): the bias follows its last axis
        axis = b.ndim - 1 if axis is None else axis
        if b.ndim == 0 or b.shape[axis] != shift.size:
            raise InvalidOptionError(f"bias {name} (shape {list(b.shape)}) cannot follow the {shift.size} "
                                     f"per-channel scales of weight {w.name}")
    q = np.rint(np.ldexp(b.astype(np.float64), pow2.expand_shape(shift, b.ndim, axis) if per else shift))
    if q.size and float(np.max(np.abs(q))) > 2**31 - 1:
        ctx.report.warnings.append(f"bias {name}: values saturate int32 at shift {np.max(shift)} (clipped)")
    if name in ctx.given and ctx.given[name].shift != (shift.tolist() if per else shift):
        ctx.report.warnings.append(f"bias {name}: the given shift is ignored; a bias always takes shift_in + shift_w")
    rng = (float(b.min()), float(b.max())) if b.size else (0.0, 0.0)
    return TensorQuant(name, "bias", 32, True, shift.tolist() if per else int(shift), axis if per else None, rng,
                       "scale_in*scale_w")
