"""Sixteen-bit layers (``--int16 PATTERN``, and what ``--target-sqnr --promote int16`` keeps wide).

A layer quantized at 16 bits keeps the 8-bit flow's form: its weight is a symmetric 16-bit power-of-two
tensor (per channel where the rest are), its output an int16/uint16 QuantizeLinear at the shift the
estimator chooses for 16 bits, its bias int32 at ``scale_in * scale_w`` as everywhere. Its *input* is
whatever the layer before it produces (8 bits, unless that one is wide too): a 16-bit layer is a
layer whose weight and output keep 8 more bits, as TIDL-class accelerators run them (their 16-bit
layers read 8-bit tensors and write 16-bit ones).

Matching follows ``--exclude``: a pattern (fnmatch) matches a layer's node name or ``op:name``, or the
name of a lone quantized tensor (a graph input, an Add/Concat output, a constant operand); a
shared-scale group with one wide member is wide as a whole (one scale, one carrier), which the report's
``int16_tensors`` summary lists. A pattern that matches nothing is reported by name (and, matching no
node or tensor at all, raises no opset).

16-bit QuantizeLinear/DequantizeLinear exist in ONNX from opset 21; a model below it is converted
(onnx's version converter) only when a pattern is given.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from .params import SIXTEEN_BIT_OPSET
from .placement_plan import Plan

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from ...report import Report
    from .config import QuantizeConfig
    from .params import QuantizeContext

WIDE_BITS = 16  # ONNX's next QDQ carrier after 8 bits


def wide_tensors(plan: Plan, patterns: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """Tensor → 16 for every quantized tensor a pattern widens, and the patterns that matched nothing."""
    if not patterns:
        return {}, []
    used: set[str] = set()
    wide: dict[str, int] = {}
    weights = {u.node: u.weight for u in plan.weights}

    def hit(*names: str) -> bool:
        found = [p for p in patterns if any(fnmatchcase(n, p) for n in names)]
        used.update(found)
        return bool(found)

    for entry in plan.layers:
        if entry.action in ("quantized", "shared") and hit(entry.node, f"{entry.op}:{entry.node}"):
            for t in (weights.get(entry.node), entry.output):
                if t is not None:
                    wide[t] = WIDE_BITS
    for t in plan.activations + plan.constants:
        if t not in wide and hit(t):
            wide[t] = WIDE_BITS
    for t in list(wide):  # one scale per group: a wide member widens the group
        root = plan.groups.get(t)
        if root is not None:
            wide.update(dict.fromkeys(plan.members(root), WIDE_BITS))
    return wide, [p for p in patterns if p not in used]


def widen(ctx: QuantizeContext) -> None:
    """Set ``ctx.wide`` from the config's ``int16`` patterns; the report names the layers and the
    patterns that matched nothing."""
    if ctx.cfg.promote != "float" and ctx.cfg.target_sqnr is None:
        ctx.report.warnings.append(f"--promote {ctx.cfg.promote}: ignored without --target-sqnr")
    ctx.wide, unmatched = wide_tensors(ctx.plan, tuple(ctx.cfg.int16))
    for pattern in unmatched:
        ctx.report.warnings.append(f"--int16 {pattern!r} matches no quantized layer or tensor: ignored")
    if ctx.wide:
        ctx.report.summary["int16_tensors"] = sorted(ctx.wide)


def drop_unmatched(cfg: QuantizeConfig, graph: gs.Graph, report: Report) -> QuantizeConfig:
    """``cfg`` without the ``int16`` patterns that match no node (name or ``op:name``) and no tensor of
    ``graph``, each warned about: the opset is raised for 16 bits only where a pattern can widen something."""
    if not cfg.int16:
        return cfg
    names = [n for node in graph.nodes for n in (node.name, f"{node.op}:{node.name}")] + list(graph.tensors())
    keep = tuple(p for p in cfg.int16 if any(fnmatchcase(n, p) for n in names))
    for pattern in cfg.int16:
        if pattern not in keep:
            report.warnings.append(f"--int16 {pattern!r} matches no node or tensor: ignored")
    return cfg if keep == tuple(cfg.int16) else dataclasses.replace(cfg, int16=keep)


def needed_opset(cfg: QuantizeConfig) -> tuple[int, str]:
    """The default-domain opset ``cfg``'s QDQ form needs, and why."""
    if cfg.int16:
        return SIXTEEN_BIT_OPSET, "16-bit QuantizeLinear/DequantizeLinear (--int16)"
    if cfg.per_channel:
        return 13, "per-channel DequantizeLinear (axis)"
    return 10, "QuantizeLinear/DequantizeLinear"
