"""The optimizer step, in place on onnxruntime's own parameter buffers.

``CheckpointState.parameters[name].data`` and ``.grad`` are numpy *views* of the training session's
CPU buffers (the same memory from step to step), so the update writes the weights where onnxruntime
reads them: no copy of any parameter or gradient per step. Each array gets one scratch buffer (two
for AdamW) so the update allocates nothing:

* SGD with momentum, Caffe's form: ``v = μ v + lr·mult·(g + wd·w)``, ``w -= v``;
* AdamW: decoupled weight decay, bias-corrected moments (β = 0.9, 0.999; ε = 1e-8).

Masks (exact zeros) multiply the gradient first and the buffers and weight after, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def _no_mask(*_arrays: np.ndarray) -> None:
    pass


class Optimizer:
    """SGD-momentum or AdamW state (``slots``) for a fixed set of named arrays."""

    def __init__(self, kind: str, weights: dict[str, np.ndarray], *, momentum: float) -> None:
        self.kind, self.momentum = kind, momentum
        kinds = ("v",) if kind == "sgd" else ("m", "v")
        self.slots = {k: {n: np.zeros_like(w) for n, w in weights.items()} for k in kinds}
        count = 1 if kind == "sgd" else 2
        self.scratch = {n: [np.empty_like(w) for _ in range(count)] for n, w in weights.items()}

    def step(self, name: str, w: np.ndarray, g: np.ndarray, *, lr: float, decay: float, t: int,
             mask: Callable[..., None] | None = None) -> None:
        """Update ``w`` in place from its gradient ``g`` (iteration ``t``, 1-based); ``mask(*arrays)``
        zeroes the masked entries (None: no mask)."""
        mask = mask or _no_mask
        mask(g)
        if self.kind == "sgd":
            v, (tmp,) = self.slots["v"][name], self.scratch[name]
            v *= self.momentum
            if decay:
                np.multiply(w, decay, out=tmp)
                tmp += g
            else:
                np.copyto(tmp, g)
            tmp *= lr
            v += tmp
            w -= v
            mask(v, w)
            return
        m, v = self.slots["m"][name], self.slots["v"][name]
        a, b = self.scratch[name]
        b1, b2 = ADAM_BETAS
        m *= b1
        np.multiply(g, 1 - b1, out=a)
        m += a
        v *= b2
        np.multiply(g, 1 - b2, out=a)
        a *= g
        v += a
        np.divide(v, 1 - b2 ** t, out=a)  # v̂
        np.sqrt(a, out=a)
        a += ADAM_EPS
        np.divide(m, 1 - b1 ** t, out=b)  # m̂
        b /= a
        if decay:
            np.multiply(w, decay, out=a)
            b += a
        b *= lr
        w -= b
        mask(m, v, w)
