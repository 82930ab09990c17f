"""Calibration sources: where the sample inputs come from, streamed one batch at a time.

``open_source(spec, model, ...)`` accepts

- a directory of images (png, jpg, bmp, ...), preprocessed with :class:`onnxsq.data.images.Preprocess`
  (size from ``--size`` or the model's static input size; 1 channel → grayscale);
- a directory of ``.npy`` / ``.npz`` files (a ``.npy`` feeds the only input of a one-input model; an
  ``.npz`` holds arrays keyed by input name, or a lone array for a one-input model);
- a single ``.npz`` (the same keys; axis 0 of every array indexes samples);
- ``module.py:function`` (or ``package.module:function``) returning an iterable of
  ``{input_name: array}`` feeds;
- or, from Python, any iterable of such feeds.

Arrays may carry a batch axis or not (one rank less than the input). Each is checked against the
model input (rank, static dims, channels) and a mismatch is a one-line :class:`DataError` naming the
file. An unreadable image among readable ones is skipped with a warning naming it; a source with no
usable sample is an error. Nothing is read before it is needed: memory is one batch, not the set.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data.images import Preprocess, is_image, load_image
from ..errors import DataError, InvalidOptionError, first_line
from ..graph import onnx_dtype_to_np
from ..shapes import IMAGE_SIZES

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...]  # None for a symbolic or unknown dim

    @property
    def batch_static(self) -> int | None:
        return self.dims[0] if self.dims else None


def model_inputs(model: onnx.ModelProto, *, exclude: Collection[str] = ()) -> list[InputSpec]:
    """The inputs a sample must feed: graph inputs that are neither initializers nor in ``exclude``
    (e.g. the weight inputs of a skeleton, fed from elsewhere)."""
    inits = {i.name for i in model.graph.initializer} | set(exclude)
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        out.append(InputSpec(vi.name, onnx_dtype_to_np(tt.elem_type), dims))
    return out


@dataclass
class CalibrationSource:
    """An iterable of feeds (each a dict of arrays WITH a batch axis); ``warnings`` collects skips."""

    description: str
    make: Callable[..., Iterator[tuple[str, Mapping[str, Any]]]]  # (lo=0, hi=None): (origin, raw feed) of items lo..hi
    inputs: list[InputSpec]
    total: int | None = None  # samples, when known without reading
    warnings: list[str] = field(default_factory=list)
    size: Callable[[], int | None] = lambda: None  # items (files, rows, feeds), when known without reading them

    def __iter__(self) -> Iterator[Feed]:
        return self.items()

    def items(self, lo: int = 0, hi: int | None = None) -> Iterator[Feed]:
        """The feeds of items ``lo`` to ``hi`` (a file, a row of a .npz, a feed: one or more samples)."""
        any_ok = False
        for origin, raw in self.make(lo, hi):
            feed = conform(raw, self.inputs, origin)
            any_ok = True
            yield feed
        if not any_ok and lo == 0 and (hi is None or hi > 0):
            raise DataError(f"{self.description}: no usable calibration sample")


def conform(raw: Mapping[str, Any], inputs: list[InputSpec], origin: str) -> Feed:
    """Check a raw feed against the model inputs; add the batch axis where missing; cast dtypes."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{origin}: a calibration sample must be a dict {{input_name: array}}, "
                        f"got {type(raw).__name__}")
    names = [i.name for i in inputs]
    if len(inputs) == 1 and len(raw) == 1 and names[0] not in raw:
        raw = {names[0]: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        have = ", ".join(map(str, raw)) or "nothing"
        raise DataError(f"{origin}: no array for model input(s) {', '.join(missing)} (has {have})")
    feed: Feed = {}
    for spec in inputs:
        arr = np.asarray(raw[spec.name])
        rank = len(spec.dims)
        if arr.ndim == rank - 1:
            arr = arr[None]
        if arr.ndim != rank:
            raise DataError(f"{origin}: input {spec.name!r} has shape {list(arr.shape)}, the model wants rank "
                            f"{rank} ({_fmt_dims(spec.dims)})")
        for axis, (have, want) in enumerate(zip(arr.shape, spec.dims)):
            if axis > 0 and want is not None and have != want:
                what = "channels" if axis == 1 and rank == 4 else f"dim {axis}"
                raise DataError(f"{origin}: input {spec.name!r} has shape {list(arr.shape)}, which does not fit "
                                f"the model's {_fmt_dims(spec.dims)} ({what}: {have} vs {want})")
        if arr.dtype != spec.dtype:
            if arr.dtype.kind not in "fiub" or (spec.dtype.kind != "f" and arr.dtype.kind == "f"):
                raise DataError(f"{origin}: input {spec.name!r} is {arr.dtype}, the model wants {spec.dtype}")
            arr = arr.astype(spec.dtype)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise DataError(f"{origin}: input {spec.name!r} holds inf or nan")
        feed[spec.name] = np.require(arr, requirements="C")
    return feed


def _fmt_dims(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def image_preprocess(model_inputs_: list[InputSpec], pre: Preprocess | None, origin: str) -> Preprocess:
    """Complete ``pre`` from the model: its size (when static) and its channel count."""
    pre = pre or Preprocess()
    if len(model_inputs_) != 1:
        raise DataError(f"{origin}: images can feed a one-input model; this model has inputs "
                        f"{', '.join(i.name for i in model_inputs_)} (use .npz files or module.py:function)")
    spec = model_inputs_[0]
    if len(spec.dims) != 4:
        raise DataError(f"{origin}: images need a 4-D model input, {spec.name!r} is {_fmt_dims(spec.dims)}")
    c_axis, hw = (1, (2, 3)) if pre.layout == "nchw" else (3, (1, 2))
    channels = spec.dims[c_axis]
    if channels not in (1, 3):
        raise DataError(f"{origin}: the model input {spec.name!r} {_fmt_dims(spec.dims)} wants "
                        f"{'a dynamic number of' if channels is None else channels} channels in layout "
                        f"{pre.layout}; images give 1 or 3 (check --layout)")
    size = pre.size
    if size is None:
        h, w = spec.dims[hw[0]], spec.dims[hw[1]]
        size = (h or IMAGE_SIZES[0][0], w or IMAGE_SIZES[0][1])
        if h is None or w is None:  # the CLI's default (onnxsq.shapes): a size real vision models take
            log.info("input %r has a dynamic size %s: images are resized to %dx%d (--size or --input-shape sets it)",
                     spec.name, _fmt_dims(spec.dims), *size)
    return Preprocess(size=tuple(size), mean=pre.mean, std=pre.std, channel_order=pre.channel_order,
                      layout=pre.layout, channels=channels)


def _image_dir(files: list[Path], inputs: list[InputSpec], pre: Preprocess, warnings: list[str]):
    name = inputs[0].name

    def make(lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for f in files[lo:hi]:
            try:
                x = load_image(f, pre)
            except DataError as exc:  # one bad file among many: skip it, say so in the report
                warnings.append(f"skipped {exc}")
                continue
            yield str(f), {name: x}

    return make


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
        raise DataError(f"{path}: cannot read as .npz ({first_line(exc)})") from None


def npz_rows(path: Path, inputs: list[InputSpec]) -> int:
    """Samples in a single .npz (axis 0 of the array of its first input; 1 without a batch axis)."""
    arrays = _npz_arrays(path)
    arrays = {inputs[0].name: next(iter(arrays.values()))} if len(inputs) == 1 and len(arrays) == 1 else arrays
    a, rank = next(((arrays[i.name], len(i.dims)) for i in inputs if i.name in arrays), (None, 0))
    return 0 if a is None else 1 if a.ndim == rank - 1 else int(a.shape[0])


def _npy_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
        raise DataError(f"{path}: cannot read as .npy ({first_line(exc)})") from None


def _check_keys(arrays: dict[str, np.ndarray], inputs: list[InputSpec], path: Path) -> None:
    names = {i.name for i in inputs}
    if len(inputs) == 1 and len(arrays) == 1:
        return
    if not names & set(arrays):
        raise DataError(f"{path}: its arrays ({', '.join(arrays) or 'none'}) match no model input "
                        f"({', '.join(sorted(names))})")


def _tensor_dir(files: list[Path], inputs: list[InputSpec]):
    def make(lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for f in files[lo:hi]:
            if f.suffix.lower() == ".npy":
                if len(inputs) != 1:
                    raise DataError(f"{f}: a .npy file can feed a one-input model only; use .npz keyed by input "
                                    "name")
                yield str(f), {inputs[0].name: _npy_array(f)}
            else:
                arrays = _npz_arrays(f)
                _check_keys(arrays, inputs, f)
                yield str(f), arrays

    return make


def _single_npz(path: Path, inputs: list[InputSpec]):
    """One .npz holding the whole set: axis 0 of each array indexes samples; yields one sample each."""

    def make(lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        arrays = _npz_arrays(path)
        _check_keys(arrays, inputs, path)
        if len(inputs) == 1 and len(arrays) == 1:
            arrays = {inputs[0].name: next(iter(arrays.values()))}
        wanted = {i.name: len(i.dims) for i in inputs if i.name in arrays}
        n = None
        for k, rank in wanted.items():
            a = arrays[k]
            if a.ndim == rank - 1:  # a single sample without batch axis
                arrays[k] = a = a[None]
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise DataError(f"{path}: arrays hold different sample counts ({k}: {a.shape[0]} vs {n})")
        for i in range(n or 0)[lo:hi]:
            yield f"{path}[{i}]", {k: arrays[k][i:i + 1] if k in wanted else arrays[k] for k in arrays}

    return make


def _function_source(spec: str, inputs: list[InputSpec]):
    mod_part, _, func_name = spec.rpartition(":")
    func = _load_function(mod_part, func_name, spec)

    def make(lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        if lo or hi is not None:
            raise InvalidOptionError(f"{spec}: a function's samples cannot be split into shards (their number "
                                     "is unknown without running it): give a folder or a .npz")
        try:
            produced = func()
            iterator = iter(produced)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise DataError(f"{spec}: calling it failed: {type(exc).__name__}: {first_line(exc)}") from None
        i = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - the user's generator
                raise DataError(f"{spec}: sample {i} failed: {type(exc).__name__}: {first_line(exc)}") from None
            yield f"{spec} sample {i}", item
            i += 1

    return make


def _load_function(mod_part: str, func_name: str, spec: str) -> Callable:
    if not mod_part or not func_name:
        raise InvalidOptionError(f"{spec}: expected module.py:function")
    try:
        if mod_part.endswith(".py") or os.sep in mod_part:
            path = Path(mod_part)
            if not path.is_file():
                raise DataError(f"{path}: no such Python file")
            mod_name = f"_onnxsq_calib_{abs(hash(str(path.resolve())))}"
            ms = importlib.util.spec_from_file_location(mod_name, path)
            if ms is None or ms.loader is None:
                raise DataError(f"{path}: cannot import it as a Python module")
            module = importlib.util.module_from_spec(ms)
            sys.modules[mod_name] = module
            ms.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_part)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module
        raise DataError(f"{mod_part}: importing it failed: {type(exc).__name__}: {first_line(exc)}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"{mod_part}: has no function {func_name!r}")
    return func


def open_source(spec: str | os.PathLike | Iterable[Mapping[str, Any]], model: onnx.ModelProto, *,
                preprocess: Preprocess | None = None, exclude: Collection[str] = ()) -> CalibrationSource:
    """A :class:`CalibrationSource` for ``spec`` (see the module docstring for what it may be);
    ``exclude``: graph inputs that are not data (see :func:`model_inputs`)."""
    inputs = model_inputs(model, exclude=exclude)
    if not isinstance(spec, (str, os.PathLike)):
        items = spec

        def feeds(lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
            return itertools.islice(((f"feed {i}", f) for i, f in enumerate(items)), lo, hi)

        return CalibrationSource("calibration feeds", feeds, inputs,
                                 size=lambda: len(items) if isinstance(items, Sized) else None)
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists() and ":" in text and not text.endswith(":"):
        source = CalibrationSource(text, _function_source(text, inputs), inputs)
        if preprocess is not None and preprocess != Preprocess():
            source.warnings.append("image preprocessing options are ignored: the calibration data come from "
                                   f"{text}")
        return source
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: a calibration file must be a .npz (or give a directory, or module.py:function)")
        source = CalibrationSource(str(path), _single_npz(path, inputs), inputs, size=lambda: npz_rows(path, inputs))
        if preprocess is not None and preprocess != Preprocess():
            source.warnings.append("image preprocessing options are ignored: the calibration data are tensors")
        return source
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    tensors = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    images = [p for p in files if is_image(p)]
    ignored = preprocess is not None and preprocess != Preprocess()
    if tensors:
        source = CalibrationSource(str(path), _tensor_dir(tensors, inputs), inputs,
                                   total=len(tensors) if all(p.suffix.lower() == ".npy" for p in tensors) else None,
                                   size=lambda: len(tensors))
        if ignored:
            source.warnings.append("image preprocessing options are ignored: the calibration data are tensors")
        if images:
            source.warnings.append(f"{path}: using its {len(tensors)} .npy/.npz files, not its {len(images)} images")
        return source
    if images:
        pre = image_preprocess(inputs, preprocess, str(path))
        source = CalibrationSource(str(path), lambda lo=0, hi=None: iter(()), inputs, total=len(images),
                                   size=lambda: len(images))
        source.make = _image_dir(images, inputs, pre, source.warnings)
        return source
    raise DataError(f"{path}: no images (png, jpg, ...) or .npy/.npz files in it")


def batches(source: Iterable[Feed], inputs: list[InputSpec], *, batch_size: int = 1,
            count: int | None = None) -> Iterator[tuple[Feed, int]]:
    """Re-batch feeds to ``batch_size`` samples (when the batch axis is dynamic), capped at ``count``.

    Yields ``(feed, samples_in_it)``. A model with a static batch size gets batches of exactly that.
    """
    static = {i.batch_static for i in inputs}
    fixed = next(iter(static)) if len(static) == 1 and None not in static else None
    target = fixed or max(1, batch_size)
    pending: list[Feed] = []
    have = 0
    taken = 0
    for feed in source:
        n = next(iter(feed.values())).shape[0] if feed else 1
        if count is not None and taken + n > count:
            keep = count - taken
            if keep <= 0:
                break
            feed = {k: v[:keep] for k, v in feed.items()}
            n = keep
        taken += n
        if pending and fixed is None and _shapes(feed) != _shapes(pending[0]):
            # dynamic non-batch dims that differ cannot share a batch: flush what is pending
            yield {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}, have
            pending, have = [], 0
        pending.append(feed)
        have += n
        while have >= target:
            joined = {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}
            yield {k: v[:target] for k, v in joined.items()}, target
            rest = {k: v[target:] for k, v in joined.items()}
            have -= target
            pending = [rest] if have else []
        if count is not None and taken >= count:
            break
    if have:
        if fixed is not None:
            log.warning("dropping the last %d calibration sample(s): the model's batch is fixed at %d", have, fixed)
        else:
            yield {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}, have


def _shapes(feed: Feed) -> dict[str, tuple[int, ...]]:
    return {k: v.shape[1:] for k, v in feed.items()}
