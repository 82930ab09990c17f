"""Sparsity during training: masks, weight thresholding, gradual sparsification, lr multipliers.

The solver options of the original (algorithms.md §4), applied to numpy copies of the weights
between two optimizer steps:

* ``weight_connect_mode: WEIGHT_DISCONNECTED_ELTWISE`` — a mask ``w != 0`` taken at the start; the
  gradient, the update, the optimizer buffers and the weight are multiplied by it, so zeros stay
  exactly zero through momentum and weight decay. Masks only ever lose entries (newly thresholded
  weights join the zeros).
* ``threshold_weights`` + ``sparsity_threshold`` — after each update, zero every ``|w| <= threshold``.
* gradual sparsification — from ``sparsity_start_iter``, every ``sparsity_step_iter`` iterations while
  the total sparsity is below ``sparsity_target``: channelwise thresholding (the threshold pass's
  ``threshold_array``) with fraction ``factor`` (``factor * sparsity_low_ratio`` for the original's
  "low" class), then ``factor += sparsity_step_factor``. The factor rises past 1 (up to
  ``1 / sparsity_low_ratio``) while the target is not reached, so the "low" layers can follow; what the
  caps (``threshold_value_max``, ``threshold_value_maxratio``) forbid stays: weights at or above a
  channel's cap are never zeroed. When a run ends below the target, :meth:`SparsityControl.shortfall`
  names the layers that held it back and the option that would let each go further.
* ``sparsity_target`` + ``sparsity_lr_mult`` — once a layer's zero fraction reaches the target its
  learning-rate multiplier becomes ``sparsity_lr_mult`` for good.

Sparsity is measured over the conv weights as :mod:`onnxsq.sparsity` defines them (``CONV_OPS``:
Conv and ConvTranspose; the denominator is their total element count), so training logs, reports and
the pipeline tables print the same number. Gradual thresholding changes Conv weights only, as the
original (which skipped deconvolution) and the threshold pass's default do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ..sparsity import count_zeros
from .config import TrainConfig

log = logging.getLogger(__name__)


def _threshold_array():
    from ..passes.threshold import threshold_array

    return threshold_array


def _layer_class(ni: int, no: int) -> str | None:
    from ..passes.threshold import layer_class

    return layer_class(ni, no)


class SparsityControl:
    """Owns the masks, the lr multipliers and the gradual-thresholding factor."""

    def __init__(self, cfg: TrainConfig, weights: dict[str, np.ndarray], conv_groups: dict[str, int],
                 all_weights: list[str], ops: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.conv = dict(conv_groups)  # Conv and ConvTranspose weights → group
        self.ops = {n: (ops or {}).get(n, "Conv") for n in self.conv}
        self.masks: dict[str, np.ndarray] = {}
        if cfg.masked:
            self.masks = {n: weights[n] != 0 for n in all_weights}
        self.lr_mult: dict[str, float] = {}
        self.factor = cfg.sparsity_start_factor
        self.factor_max = max(1.0, 1.0 / cfg.sparsity_low_ratio) if cfg.sparsity_low_ratio > 0 else 1.0
        self.events: list[str] = []

    # -- measurements ---------------------------------------------------------------------------
    def layer_sparsity(self, weights: dict[str, np.ndarray]) -> dict[str, float]:
        return {n: count_zeros(weights[n]) / weights[n].size if weights[n].size else 0.0 for n in self.conv}

    def total_sparsity(self, weights: dict[str, np.ndarray]) -> float:
        total = sum(weights[n].size for n in self.conv)
        zeros = sum(count_zeros(weights[n]) for n in self.conv)
        return zeros / total if total else 0.0

    # -- hooks ----------------------------------------------------------------------------------
    def apply_masks(self, name: str, *arrays: np.ndarray) -> None:
        mask = self.masks.get(name)
        if mask is not None:
            off = ~mask
            for a in arrays:
                np.copyto(a, 0, where=off)

    def after_update(self, it: int, weights: dict[str, np.ndarray]) -> None:
        """Thresholding, gradual sparsification and lr multipliers after iteration ``it`` (1-based)."""
        cfg = self.cfg
        changed: set[str] = set()
        if cfg.threshold_weights:
            for n in self.conv:
                small = np.abs(weights[n]) <= cfg.sparsity_threshold
                small &= weights[n] != 0
                if small.any():
                    weights[n][small] = 0
                    changed.add(n)
        if (cfg.sparsity_start_iter >= 0 and it >= cfg.sparsity_start_iter
                and (it - cfg.sparsity_start_iter) % cfg.sparsity_step_iter == 0
                and self.total_sparsity(weights) < cfg.sparsity_target):
            changed |= self._gradual_step(it, weights)
        if changed and self.masks:
            for n in changed:
                self.masks[n] &= weights[n] != 0
        if cfg.sparsity_target > 0:
            for n, s in self.layer_sparsity(weights).items():
                if s >= cfg.sparsity_target and n not in self.lr_mult:
                    self.lr_mult[n] = cfg.sparsity_lr_mult
                    self.events.append(f"iter {it}: {n} reached {s:.3f} >= target, lr_mult {cfg.sparsity_lr_mult}")
                    log.info("%s", self.events[-1])

    def _gradual_step(self, it: int, weights: dict[str, np.ndarray]) -> set[str]:
        cfg = self.cfg
        changed = self._global_step(weights) if cfg.sparsity_allocation == "global" else self._layer_step(weights)
        log.info("iter %d: gradual thresholding at factor %.3f → sparsity %.4f", it, self.factor,
                 self.total_sparsity(weights))
        self.factor = min(self.factor_max, self.factor + cfg.sparsity_step_factor)
        return changed

    def _global_step(self, weights: dict[str, np.ndarray]) -> set[str]:
        """One magnitude threshold over the eligible layers pooled: ``factor`` of the pool becomes zero
        (existing zeros count), a weight at or above its layer's cap never. Layers whose weights are
        small (a large fan-in) give more zeros than layers whose weights are large."""
        from ..passes.threshold.search import caps, pooled_threshold

        cfg = self.cfg
        names = [n for n in self.conv if self._excluded(n, weights[n])[0] is None]
        layer_caps = [float(caps(float(np.abs(weights[n]).max()) if weights[n].size else 0.0,
                                 cfg.threshold_value_max, cfg.threshold_value_maxratio)) for n in names]
        t = pooled_threshold([weights[n] for n in names], layer_caps, min(1.0, self.factor))
        changed = set()
        for n, cap in zip(names, layer_caps):
            w = weights[n]
            a = np.abs(w)
            kill = (a <= np.float64(t)) & (a < np.float64(cap)) & (w != 0)
            if kill.any():
                w[kill] = 0
                changed.add(n)
        return changed

    def _layer_step(self, weights: dict[str, np.ndarray]) -> set[str]:
        cfg = self.cfg
        threshold_array = _threshold_array()
        changed = set()
        for n in self.conv:
            skip, klass = self._excluded(n, weights[n])
            if skip:
                continue
            w = weights[n]
            frac = min(1.0, self.factor * (cfg.sparsity_low_ratio if klass in (None, "low") else 1.0))
            new, _info = threshold_array(w, frac, value_max=cfg.threshold_value_max,
                                         value_maxratio=cfg.threshold_value_maxratio, channelwise=True)
            if np.count_nonzero(new) != np.count_nonzero(w):
                w[...] = new
                changed.add(n)
        return changed

    def _excluded(self, name: str, w: np.ndarray) -> tuple[str | None, str | None]:
        """(why gradual thresholding leaves ``name`` alone or None, its layer class)."""
        if self.ops[name] != "Conv":
            # ConvTranspose: counted in the sparsity, thresholded only by the threshold pass's opt-in
            return "a ConvTranspose (not thresholded during training)", None
        group = self.conv[name]
        if group > 1 and w.shape[1] == 1:
            return "depthwise (kept dense, as the original)", None  # the original's later versions
        klass = _layer_class(w.shape[1] * group, w.shape[0])
        if klass is None and not self.cfg.sparsity_all_layers:
            return "too small for the original's rule (sparsity_all_layers: true thresholds it)", None
        return None, klass

    def shortfall(self, weights: dict[str, np.ndarray]) -> str | None:
        """One line naming the layers that kept gradual sparsification below its target, or None."""
        cfg = self.cfg
        total = self.total_sparsity(weights)
        if cfg.sparsity_start_iter < 0 or total >= cfg.sparsity_target:
            return None
        layer = self.layer_sparsity(weights)
        held = [self._held(n, weights[n]) + f" at {layer[n]:.3f}" for n in self.conv
                if layer[n] < cfg.sparsity_target]
        return (f"gradual sparsification ended at conv sparsity {total:.4f}, below sparsity_target "
                f"{cfg.sparsity_target:g} (factor {self.factor:.3f}); held back: {'; '.join(held)}")

    def _held(self, name: str, w: np.ndarray) -> str:
        """Why ``name`` is below the target, and what would let it go further."""
        cfg = self.cfg
        skip, klass = self._excluded(name, w)
        if skip:
            return f"{name} {skip}"
        rows = np.abs(w.reshape(w.shape[0], -1)).astype(np.float64)
        top = rows.max(axis=1)
        by_ratio = cfg.threshold_value_maxratio * top
        cap = np.minimum(cfg.threshold_value_max, by_ratio)
        allowed = float(np.mean((rows < cap[:, None]) | (rows == 0)))
        if allowed < cfg.sparsity_target + 1e-3:
            by_max = np.mean(cfg.threshold_value_max < by_ratio) > 0.5  # the cap most channels meet
            key, value = (("threshold_value_max", cfg.threshold_value_max) if by_max else
                          ("threshold_value_maxratio", cfg.threshold_value_maxratio))
            return f"{name} by the caps (they allow {allowed:.3f}; a larger {key} than {value:g} lets it go further)"
        if cfg.sparsity_allocation == "global":
            return (f"{name} by the schedule (the pooled fraction reached {min(1.0, self.factor):.3f}; more "
                    f"iterations after sparsity_start_iter or a larger sparsity_step_factor let it go further)")
        frac = min(1.0, self.factor * (cfg.sparsity_low_ratio if klass in (None, "low") else 1.0))
        return (f"{name} by the schedule (its fraction reached {frac:.3f}; more iterations after sparsity_start_iter "
                f"or a larger sparsity_step_factor let it go further)")
