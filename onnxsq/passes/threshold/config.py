"""The options of :func:`onnxsq.passes.threshold.threshold`: the one place their defaults live.

Each option's field carries its CLI help, its choices and the original tool's ``_`` spelling
(``threshold_fraction_low``) as metadata (:func:`option`); the CLI and the recipe keys are built from
them. Light (numpy only), so the CLI reads it without importing graph code. Defaults: the original's
fractions (its code) with its manual's caps and step; its code's caps (1e-4, 1e-3) zero almost nothing.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidOptionError
from .search import SEARCHES


def option(default: Any, help: str, original: str | None = None, *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its default and, as metadata, the CLI help, choices and the original spelling."""
    return field(default=default, metadata={"help": help, "original": original, "choices": choices})


def options_with_original_spelling(cls: type) -> dict[str, str]:
    """``{original spelling: field name}`` of a config dataclass (``threshold_fraction_low`` → ``fraction_low``)."""
    return {f.metadata["original"]: f.name for f in dataclasses.fields(cls) if f.metadata.get("original")}


def parse_layers(specs: Any, where: str = "--layer") -> tuple[tuple[str, float], ...]:
    """Per-layer fractions from ``PATTERN=FRACTION`` strings (a table ``{pattern = fraction}`` as it is):
    the one parser of that vocabulary, for the CLI's ``--layer`` and the recipe's ``layer``."""
    if isinstance(specs, dict):
        return tuple(specs.items())
    out = []
    for spec in [specs] if isinstance(specs, str) else specs:
        pattern, _, value = str(spec).rpartition("=")
        try:
            out.append((pattern, float(value)))
        except ValueError:
            raise InvalidOptionError(f"{where} {spec!r}: expected PATTERN=FRACTION, e.g. 'conv1*=0.5'") from None
        if not pattern:
            raise InvalidOptionError(f"{where} {spec!r}: expected PATTERN=FRACTION, e.g. 'conv1*=0.5'")
    return tuple(out)


@dataclass(frozen=True)
class ThresholdConfig:
    """Options of :func:`threshold`. Defaults: the original's fractions and its manual's caps/step."""

    fraction_low: float = option(0.40, "Fraction to zero when only one of ni, no is >= 32.", "threshold_fraction_low")
    fraction_mid: float = option(0.80, "Fraction to zero when ni >= 32 and no >= 32.", "threshold_fraction_mid")
    fraction_high: float = option(0.90, "Fraction to zero when ni >= 256 and no >= 512.", "threshold_fraction_high")
    value_max: float = option(0.2, "Weights with |w| at or above this are never zeroed.", "threshold_value_max")
    value_maxratio: float = option(0.2, "... nor those at or above this × max|W| of the layer.",
                                   "threshold_value_maxratio")
    step_factor: float = option(1e-6, "Grid step as a fraction of max|W| (--search grid).", "threshold_step_factor")
    search: str = option("exact", "exact: partial sort; grid: the original's coarse/fine grid. Both are reported.",
                         choices=SEARCHES)
    channelwise: bool = False
    layers: tuple[tuple[str, float], ...] = ()  # (glob on node or weight name, fraction); last match wins
    excludes: tuple[str, ...] = ()
    ops: frozenset[str] = field(default_factory=lambda: frozenset({"Conv"}))
    global_fraction: float | None = None

    def __post_init__(self) -> None:
        layers = self.layers.items() if isinstance(self.layers, dict) else self.layers
        object.__setattr__(self, "layers", tuple((str(p), float(f)) for p, f in layers))
        excludes = (self.excludes,) if isinstance(self.excludes, str) else self.excludes
        object.__setattr__(self, "excludes", tuple(str(p) for p in excludes))
        ops = self.ops.split(",") if isinstance(self.ops, str) else self.ops
        object.__setattr__(self, "ops", frozenset(o.strip() for o in ops if o.strip()))
        for name in ("fraction_low", "fraction_mid", "fraction_high"):
            _check_fraction(name, getattr(self, name))
        for pattern, fraction in self.layers:
            _check_fraction(f"layer override {pattern!r}", fraction)
        if self.global_fraction is not None:
            _check_fraction("global_fraction", self.global_fraction)
        for name in ("value_max", "value_maxratio"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and np.isfinite(value) and value >= 0):
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.step_factor, numbers.Real) and np.isfinite(self.step_factor) and self.step_factor > 0):
            raise InvalidOptionError(f"step_factor must be a finite number > 0, got {self.step_factor!r}")
        if self.search not in SEARCHES:
            raise InvalidOptionError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        from ...sparsity import WEIGHT_OPS  # (imports graph code: not at module level, the CLI reads this module)

        unknown = sorted(self.ops - set(WEIGHT_OPS))
        if unknown or not self.ops:
            raise InvalidOptionError(f"ops must be a non-empty subset of {','.join(WEIGHT_OPS)}, got "
                                     f"{','.join(sorted(self.ops)) or 'nothing'}")
        if self.global_fraction is not None and self.channelwise:
            raise InvalidOptionError("global_fraction and channelwise cannot be combined "
                                     "(one pooled threshold has no per-channel form)")
        if self.global_fraction is not None and self.search == "grid":
            raise InvalidOptionError("global_fraction needs search='exact' (the original's grid is per layer)")


def _check_fraction(name: str, value: Any) -> None:
    if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
        raise InvalidOptionError(f"{name} must be a fraction within [0, 1], got {value!r}")
