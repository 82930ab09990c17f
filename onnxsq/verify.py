"""Run two models on the same inputs and compare their outputs.

Used by ``onnxsq verify`` and by every pass that checks itself (``optimize`` runs it by default).
Inputs are seeded random tensors unless the caller gives feeds (``--data`` on the CLI); their shapes
come from :mod:`onnxsq.shapes` (``--input-shape`` on the CLI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import (
    CheckNotRunError,
    DataError,
    OnnxsqError,
    UnsupportedModelError,
    VerificationError,
    first_line,
)
from .graph import data_inputs, onnx_dtype_to_np
from .model_io import EXTERNAL_THRESHOLD, model_nbytes
from .report import Report
from .runtime import FedSession, make_session, quiet_run_options
from .shapes import ATTEMPTS, GivenShapes, format_shapes, resolve_input_shapes, shape_hint

log = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]


def input_shape(vi: onnx.ValueInfoProto, default_dim: int = 1) -> list[int]:
    """Static shape of a graph input; symbolic or unknown dims become ``default_dim``."""
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else default_dim)
    return dims


def random_feeds(model: onnx.ModelProto, *, seed: int = 0, batch: int = 1,
                 dims: Mapping[str, Iterable[int]] | None = None,
                 input_shapes: GivenShapes | None = None, attempt: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs: standard normal floats, small non-negative ints, random bools.

    Shapes: :func:`onnxsq.shapes.resolve_input_shapes` (``input_shapes`` checked against the model,
    then static dims, shared symbols, ``batch`` on axis 0, image-like sizes; ``attempt`` 1 for the
    larger retry sizes). ``dims`` names shapes taken as they are, unchecked.
    """
    shapes = resolve_input_shapes(model, input_shapes, attempt, batch=batch)
    for name, shape in (dims or {}).items():
        if name in shapes:
            shapes[name] = tuple(shape)
    return _feeds_for(model, shapes, seed)


def _feeds_for(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in data_inputs(model):
        shape = shapes[vi.name]
        dtype = onnx_dtype_to_np(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def load_feeds(path: str | os.PathLike, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Feeds from a ``.npz`` (arrays keyed by input name, or one array for a one-input model) or a
    directory of such files."""
    path = Path(path)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise DataError(f"{path}: no .npz input data found")
    names = [vi.name for vi in data_inputs(model)]
    out = []
    for f in files:
        try:
            with np.load(f) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise several types for bad files
            raise DataError(f"{f}: cannot read as .npz ({exc})") from None
        if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
            arrays = {names[0]: next(iter(arrays.values()))}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DataError(f"{f}: no array for model input(s) {', '.join(missing)} (has {', '.join(arrays)})")
        out.append({n: arrays[n] for n in names})
    return out


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    ok: bool


@dataclass
class VerifyResult:
    outputs: list[OutputDiff] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_report(self) -> Report:
        """The comparison as a ``verify`` report: one candidate per output, totals in the summary."""
        report = Report("verify")
        for o in self.outputs:
            report.add(o.name, "output", "ok" if o.ok else "mismatch",
                       "" if o.ok else "|a - b| > atol + rtol * |a| somewhere",
                       max_abs=o.max_abs, mean_abs=o.mean_abs, max_rel=o.max_rel)
        report.summary.update(ok=self.ok, samples=self.samples, atol=self.atol, rtol=self.rtol,
                              max_abs=self.max_abs, max_rel=self.max_rel)
        return report

    def failure_message(self) -> str:
        """One line naming the outputs beyond tolerance (empty when all pass)."""
        bad = [o for o in self.outputs if not o.ok]
        if not bad:
            return ""
        parts = ", ".join(f"{o.name} (max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g})" for o in bad)
        return (f"outputs differ beyond tolerance (atol {self.atol:g}, rtol {self.rtol:g}) "
                f"over {self.samples} sample(s): {parts}")


def default_tolerance(model: onnx.ModelProto) -> tuple[float, float]:
    """(rtol, atol) suited to the model's float precision."""
    elem = {vi.type.tensor_type.elem_type for vi in model.graph.output}
    if onnx.TensorProto.FLOAT16 in elem:
        return 1e-2, 1e-2
    if onnx.TensorProto.DOUBLE in elem:
        return 1e-9, 1e-10
    return 1e-4, 1e-5


def compare_models(a: onnx.ModelProto | str, b: onnx.ModelProto | str, *,
                   feeds: list[Feed] | None = None, seed: int = 0, samples: int = 2,
                   rtol: float | None = None, atol: float | None = None,
                   input_shapes: GivenShapes | None = None, alternative: str | None = "--no-verify") -> VerifyResult:
    """Run ``a`` and ``b`` (graph optimizations off) on the same feeds; per-output error statistics.

    An output passes when ``|a - b| <= atol + rtol * |a|`` everywhere (numpy's allclose rule).
    Without ``feeds``, ``samples`` seeded random inputs shaped by :func:`onnxsq.shapes.resolve_input_shapes`
    (``input_shapes``: input name → dims, checked against ``a``). When ``a`` does not run on them,
    the larger retry sizes are tried once; if it still fails, :class:`CheckNotRunError` (never a
    mismatch), whose fix names ``--input-shape`` and ``alternative`` (the command's other way out).
    On given feeds or shapes there is no retry: a failure of ``a`` is a :class:`DataError`.
    """
    ma = a if isinstance(a, onnx.ModelProto) else onnx.load(str(a), load_external_data=False)
    d_rtol, d_atol = default_tolerance(ma)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    # A run of B that fails on caller-given inputs is a data problem; on inputs A takes, a model difference.
    err = VerificationError if feeds is None else DataError
    # One model at a time: only one session (and its weights) exists at once; outputs are small.
    label_a, names_a, run_a = _open(a, "model A")
    feeds, outs_a = _run_reference(label_a, run_a, ma, feeds, seed=seed, samples=samples,
                                   input_shapes=input_shapes, alternative=alternative)
    del run_a
    label_b, names_b, run_b = _open(b, "model B")
    try:
        outs_b = _run_feeds(run_b, feeds)
    except _RunFailed as exc:
        raise err(f"{label_b}: onnxruntime failed to run it on inputs of shape {_feed_shapes(feeds[exc.index])}: "
                  f"{exc}") from None
    del run_b
    if names_a != names_b:
        raise VerificationError(f"the models have different outputs: {names_a} vs {names_b}")
    return _statistics(names_a, outs_a, outs_b, rtol=rtol, atol=atol, samples=len(feeds))


def _statistics(names: list[str], outs_a: list[list[np.ndarray]], outs_b: list[list[np.ndarray]], *,
                rtol: float, atol: float, samples: int) -> VerifyResult:
    stats = {n: [0.0, 0.0, 0.0, 0, True] for n in names}  # max_abs, sum_abs, max_rel, count, ok
    for ra, rb in zip(outs_a, outs_b):
        for n, xa, xb in zip(names, ra, rb):
            xa64, xb64 = np.asarray(xa, np.float64), np.asarray(xb, np.float64)
            if xa64.shape != xb64.shape:
                raise VerificationError(f"output {n}: shapes differ {xa64.shape} vs {xb64.shape}")
            diff = np.abs(xa64 - xb64)
            s = stats[n]
            if diff.size:
                s[0] = max(s[0], float(diff.max()))
                s[1] += float(diff.sum())
                s[2] = max(s[2], float((diff / np.maximum(np.abs(xa64), 1e-12)).max()))
                s[4] = s[4] and bool(np.all(diff <= atol + rtol * np.abs(xa64)))
            s[3] += diff.size
    result = VerifyResult(atol=atol, rtol=rtol, samples=samples)
    for n, (mx, sm, mr, cnt, ok) in stats.items():
        result.outputs.append(OutputDiff(n, mx, sm / max(cnt, 1), mr, ok))
    log.info("verify: max abs %.3g, max rel %.3g over %d sample(s)", result.max_abs, result.max_rel, samples)
    return result


def _run_reference(label: str, run: Callable[[Feed], list[np.ndarray]], model: onnx.ModelProto,
                   feeds: list[Feed] | None, *, seed: int, samples: int, input_shapes: GivenShapes | None,
                   alternative: str | None) -> tuple[list[Feed], list[list[np.ndarray]]]:
    """Model A's outputs and the feeds they came from: the given feeds, or random ones (with the
    retry sizes when A refuses the first ones and no shape was given)."""
    if feeds is not None:
        try:
            return feeds, _run_feeds(run, feeds)
        except _RunFailed as exc:
            raise DataError(f"{label}: onnxruntime failed to run it on the given inputs of shape "
                            f"{_feed_shapes(feeds[exc.index])}: {exc}") from None
    tried: list[str] = []
    failure = ""
    for attempt in range(ATTEMPTS if input_shapes is None else 1):
        shapes = resolve_input_shapes(model, input_shapes, attempt)
        if format_shapes(shapes) in tried:
            continue  # this attempt changes none of the model's dynamic dims
        tried.append(format_shapes(shapes))
        log.info("verify: random inputs %s", tried[-1])
        feeds = [_feeds_for(model, shapes, seed + i) for i in range(samples)]
        try:
            return feeds, _run_feeds(run, feeds)
        except _RunFailed as exc:
            failure = str(exc)
            log.info("verify: %s does not run on random inputs %s: %s", label, tried[-1], failure)
    if input_shapes is not None:
        raise DataError(f"{label}: onnxruntime failed to run it on inputs of the given shape {tried[-1]}: {failure}")
    hint = shape_hint(model, alternative)
    raise CheckNotRunError(f"the check could not run on random inputs of shape {' or '.join(tried)}: {failure}"
                           + (f"; {hint}" if hint else ""))


def _feed_shapes(feed: Feed) -> str:
    return format_shapes({k: np.shape(v) for k, v in feed.items()})


class _RunFailed(Exception):
    """onnxruntime refused feed number ``index``; the message is its first line."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(text)
        self.index = index


_FED_PREFIX = "run failed"  # what FedSession's DataError starts with, stripped again below


def _open(model: onnx.ModelProto | str, which: str) -> tuple[str, list[str], Callable[[Feed], list[np.ndarray]]]:
    """(label, output names, run). An in-memory model runs as a :class:`FedSession` (its weights read
    in place, no serialized copy); a path is opened by onnxruntime (external data)."""
    label = which if isinstance(model, onnx.ModelProto) else str(model)
    try:
        session = (FedSession(model, mismatch=_FED_PREFIX) if isinstance(model, onnx.ModelProto)
                   else make_session(model))
    except OnnxsqError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for models it refuses
        raise UnsupportedModelError(f"{label}: onnxruntime cannot load it: {first_line(exc)}") from None
    if isinstance(session, FedSession):
        return label, session.output_names, lambda feed: session.run(None, feed)
    quiet = quiet_run_options()
    return label, [o.name for o in session.get_outputs()], lambda feed: session.run(None, dict(feed), quiet)


def _run_feeds(run: Callable[[Feed], list[np.ndarray]], feeds: list[Feed]) -> list[list[np.ndarray]]:
    """Every feed's outputs; :class:`_RunFailed` with onnxruntime's first line for the first one refused."""
    outs = []
    for i, feed in enumerate(feeds):
        try:
            outs.append(run(feed))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad feeds
            text = first_line(exc)
            if isinstance(exc, DataError) and text.startswith(f"{_FED_PREFIX}: "):
                text = text[len(_FED_PREFIX) + 2:]
            raise _RunFailed(i, text) from None
    return outs


def verify_folded(original: onnx.ModelProto, result: onnx.ModelProto, report: Report, *,
                  rtol: float | None = None, atol: float | None = None, seed: int = 0, samples: int = 2,
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
    """Run both models in onnxruntime (graph optimizations off); put the errors in ``report.summary``;
    raise VerificationError beyond tolerance."""
    if max(model_nbytes(original), model_nbytes(result)) > EXTERNAL_THRESHOLD:
        report.warnings.append("verification skipped: the model is over 2 GB (save it and run `onnxsq verify`)")
        report.summary["verified"] = False
        return
    res = compare_models(original, result, seed=seed, samples=samples, rtol=rtol, atol=atol,
                         input_shapes=input_shapes)
    report.summary.update(verified=res.ok, verify_max_abs=res.max_abs, verify_max_rel=res.max_rel,
                          verify_rtol=res.rtol, verify_atol=res.atol, verify_samples=res.samples)
    if not res.ok:
        worst = max(res.outputs, key=lambda o: o.max_abs)
        raise VerificationError(
            f"the folded model differs from the original: output {worst.name} max abs error {worst.max_abs:.3g}, "
            f"max rel {worst.max_rel:.3g} (rtol {res.rtol:g}, atol {res.atol:g}); pass --no-verify to keep it anyway")
