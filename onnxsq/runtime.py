"""Which onnxruntime is installed, execution providers, and one place that builds sessions.

``onnxruntime``, ``onnxruntime-training`` and ``onnxruntime-training-cpu`` all install the module
``onnxruntime``; they are alternative extras of onnxsq and never share an environment.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np
import onnx

from .errors import DataError, InvalidOptionError, RuntimeMissingError, first_line
from .model_io import skeleton, weight_arrays

WEIGHT_BYTES = 4096  # FedSession: constants from this size on are fed from numpy instead of living in the session

ORT_HINT = "install one runtime extra: pip install 'onnxsq[ort]' (or [train] / [train-cpu] for training)"
TRAIN_HINT = (
    "onnxruntime-training is not installed: pip install 'onnxsq[train-cpu]' (CPU) or 'onnxsq[train]' "
    "(CUDA), in an environment without plain onnxruntime"
)


def import_ort() -> ModuleType:
    """Import ``onnxruntime`` or raise a one-line error saying which extra to install."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise RuntimeMissingError(f"onnxruntime is not installed ({exc}); {ORT_HINT}") from None


def has_training() -> bool:
    """True when onnxruntime-training (with its torch dependency) is importable."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    try:
        importlib.import_module("onnxruntime.training.api")
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def import_training() -> ModuleType:
    """Import ``onnxruntime.training`` or raise a one-line error with the install hint."""
    import_ort()
    try:
        return importlib.import_module("onnxruntime.training")
    except ImportError as exc:
        raise RuntimeMissingError(f"{TRAIN_HINT} ({exc})") from None


def providers_for(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in auto|cuda|cpu; asking for cuda where it is missing fails."""
    ort = import_ort()
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeMissingError(
                "--device cuda: the CUDA execution provider is not available in this onnxruntime "
                f"(available: {', '.join(available)})"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    raise InvalidOptionError(f"--device must be auto, cuda or cpu, not {device!r}")


def make_session(
    model: onnx.ModelProto | str | bytes,
    *,
    optimize: bool = False,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
    memory_pattern: bool = True,
    in_node_order: bool = False,
    spin: bool = True,
    external: Mapping[str, object] | None = None,
    arena: bool = True,
):
    """An InferenceSession with graph optimizations off unless ``optimize``.

    ``memory_pattern=False`` stops onnxruntime from pre-planning one block for every activation of a
    run: for graphs with many fetched or observed tensors (calibration) that block is far larger than
    what a run needs at once (ResNet-50 at batch 1: peak +80 MB instead of +138 MB, same speed).

    ``model`` is a ModelProto, a path, or serialized bytes (no copy made here: large callers serialize
    once, or serialize a skeleton and feed the weights); pass a path for models with external data
    over 2 GB.

    ``in_node_order=True`` runs the nodes in the graph's own order wherever it is valid (onnxruntime's
    priority-based order with equal priorities; its default order ignores the graph's): callers that
    lay out a graph so tensors die early (calibration, the quantize report) get that memory back --
    ResNet-50-sized calibration peaked at +142 MB instead of +204 MB.

    ``spin=False``: the intra-op threads sleep between operators instead of spinning. For long runs of
    large operators (calibration) the spinning is CPU time for nothing: ResNet-50-sized at batch 1 on 2
    shared cores, 215 -> 140 ms CPU per run, and no slower in wall time while other jobs want the cores.

    ``external``: OrtValues for the model's external-data initializers of those names; onnxruntime uses
    their memory in place (the caller keeps them alive as long as the session). ``arena=False``: activations
    from malloc, not onnxruntime's CPU arena (which keeps the largest run's blocks).
    """
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    opts.enable_mem_pattern = memory_pattern
    if in_node_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if external:
        opts.add_external_initializers(list(external), list(external.values()))
    opts.enable_cpu_mem_arena = arena
    src = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(src, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))


def quiet_run_options():
    """RunOptions under which a refused feed is only raised (the caller's one-line error, maybe a retry
    with another shape), not also logged in red by onnxruntime."""
    options = import_ort().RunOptions()
    options.log_severity_level = 4
    return options


class FedSession:
    """A session over a model's *skeleton* (:func:`onnxsq.model_io.skeleton`) whose large weights are
    fed at every run from numpy arrays, which onnxruntime reads in place: the session holds no copy of
    them. (A session built from a serialized model holds its own copy, and serializing costs the
    model's size once more: two extra copies of the weights for as long as both exist.)

    ``model``: a ModelProto (split here into skeleton and weight arrays), or serialized skeleton bytes
    with its ``weights``. ``in_node_order``: see :func:`make_session`. ``mismatch``: what a failed run's
    one-line :class:`~onnxsq.errors.DataError` starts with. Graph optimizations are off and the memory
    pattern is off (many fetched or observed tensors make its pre-planned block far larger than a run).
    """

    def __init__(self, model: onnx.ModelProto | bytes, weights: Mapping[str, np.ndarray] | None = None, *,
                 in_node_order: bool = False, mismatch: str = "the data does not fit the model",
                 intra_op_threads: int = 0, spin: bool = True) -> None:
        ort = import_ort()
        if weights is None and isinstance(model, onnx.ModelProto):
            model, weights = skeleton(model, min_bytes=WEIGHT_BYTES), weight_arrays(model, min_bytes=WEIGHT_BYTES)
        self._ortvalue = ort.OrtValue.ortvalue_from_numpy
        self._mismatch = mismatch
        self.session = make_session(model if isinstance(model, bytes) else model.SerializeToString(),
                                    memory_pattern=False, in_node_order=in_node_order,
                                    intra_op_threads=intra_op_threads, spin=spin)
        self._weights = {k: self._ortvalue(np.require(v, requirements="C")) for k, v in (weights or {}).items()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._quiet = quiet_run_options()

    def run(self, fetch: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """``fetch`` (every graph output when None) for the data inputs ``feed``."""
        feeds = dict(self._weights)
        for k, v in feed.items():
            feeds[k] = self._ortvalue(np.require(v, requirements="C"))
        try:
            return [v.numpy() for v in self.session.run_with_ort_values(fetch or self.output_names, feeds,
                                                                             self._quiet)]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad feeds
            raise DataError(f"{self._mismatch}: {first_line(exc)}") from None
