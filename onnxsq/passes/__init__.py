"""Graph passes: one transformation per module, one kebab-case name per pass, one registry.

Every pass is a pure function ``pass(model, ...) -> (new_model, Report)``; the input model is never
mutated. :data:`PASSES` is the single registry: each kebab-case name (the one reports, logs and the CLI
show) maps to its function (``module:function``), its config dataclass (or None for a pass configured by
keywords) and the name the Python API exports it under (``onnxsq.<api>``). The Python API
(:mod:`onnxsq`), the CLI commands and the pipeline's stages (:mod:`onnxsq.pipeline.stages`) all resolve
a pass here, so adding one is one module and one line below. Importing this package stays cheap: the
pass modules are imported when a pass is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def load(spec: str) -> Any:
    """The object a ``module:name`` spec names (imported on first use)."""
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class PassSpec:
    """One registered pass: ``name`` (kebab-case), ``function`` and ``config`` as ``module:name`` specs."""

    name: str
    function: str
    config: str | None = None  # the config dataclass; None: the function takes keyword options

    @property
    def api_name(self) -> str:
        """The function's name, which the Python API exports (``onnxsq.fold_batchnorm``)."""
        return self.function.split(":")[1]

    @property
    def module(self) -> str:
        return self.function.split(":")[0]

    def load(self) -> Callable:
        return load(self.function)

    def config_class(self) -> type | None:
        return load(self.config) if self.config is not None else None


PASSES: dict[str, PassSpec] = {p.name: p for p in (
    PassSpec("fold-constants", "onnxsq.passes.fold_constants:fold_constants"),
    PassSpec("fold-batchnorm", "onnxsq.passes.fold_batchnorm:fold_batchnorm"),
    PassSpec("fold-forward", "onnxsq.passes.fold_forward:fold_forward"),
    PassSpec("equalize", "onnxsq.passes.equalize:equalize"),
    PassSpec("threshold", "onnxsq.passes.threshold.magnitude:threshold",
             "onnxsq.passes.threshold.config:ThresholdConfig"),
    PassSpec("quantize", "onnxsq.passes.quantize:quantize", "onnxsq.passes.quantize.config:QuantizeConfig"),
)}


def get_pass(name: str) -> Callable:
    """The pass function registered under ``name``."""
    return PASSES[name].load()
