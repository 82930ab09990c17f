"""Batches for training and evaluation: seeded per-epoch shuffling and a background prefetch thread.

Determinism: epoch ``e`` is ordered by ``default_rng([seed, e])`` and batch ``b`` of it is augmented
with ``default_rng([seed, e, b])``, so a run resumed at (e, b) sees exactly the batches an
uninterrupted run would, whatever the thread timing. A producer thread assembles the next batches
(decoding, augmentation) while the caller computes on the current one; for in-memory data
(``in_memory`` datasets: a batch is an indexing, microseconds) the batches are made in the caller's
thread instead: the same batches, without the thread's hand-offs (~0.2 ms of CPU per batch measured
in a training loop).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import DataError, InvalidOptionError
from .classification import ImageFolderDataset, load_npz
from .images import Preprocess
from .segmentation import Augment, ImageLabelDataset


class Dataset(Protocol):
    task: str
    num_classes: int
    where: str

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def open_dataset(path: str | Path, *, labels: str | Path | None = None, task: str | None = None,
                 pre: Preprocess | None = None, augment: Augment | None = None) -> Dataset:
    """``.npz`` arrays, an image folder (classification) or an image list + ``labels`` list."""
    path = Path(path)
    pre = pre or Preprocess()
    if not path.exists():
        from ..pipeline.sources import SOURCES, named_split

        builtin = named_split(str(path)) if labels is None else None
        if builtin is None:
            known = ", ".join(f"{n} ({n}:val)" for n in SOURCES)
            raise DataError(f"{path}: no such file or directory (built-in data sets: {known})")
        path = builtin
    if labels is not None:
        if task == "classification":
            raise DataError("a label list file means segmentation, but --task classification was given")
        return ImageLabelDataset(path, labels, pre, augment)
    if path.suffix.lower() == ".npz":
        return load_npz(path, task=task)
    if path.is_dir():
        if task == "segmentation":
            raise DataError(f"{path}: segmentation data is an image list with a label list (--labels) or an .npz")
        return ImageFolderDataset(path, pre)
    if path.suffix.lower() in (".txt", ".lst"):
        raise DataError(f"{path}: an image list needs its label list too (--labels LIST)")
    raise DataError(f"{path}: unknown data format (want .npz, an image folder, or image + label list files)")


def as_dataset(data: Any, model: Any = None, *, what: str = "data") -> Dataset:
    """``data`` as a dataset: a dataset (from :func:`open_dataset`) as it is, or a path (``.npz``, an image
    folder) opened with ``model``'s input size and channels (an ``onnx.ModelProto``; None: the files' own)."""
    if hasattr(data, "batch") and hasattr(data, "task"):
        return data
    if isinstance(data, (str, os.PathLike)):
        return open_dataset(data, pre=preprocess_for_model(model) if model is not None else None)
    raise InvalidOptionError(f"{what}: expected a dataset (onnxsq.open_dataset(path, ...)) or a path to .npz or an "
                             f"image folder, not {type(data).__name__}")


def check_crop(model: Any, crop: tuple[int, int] | None, *, layout: str = "nchw", spell: Any = None) -> None:
    """A training crop must be what a model with a static input H and W takes: one line saying which
    ``--crop`` would fit, before anything runs (onnxruntime's own message is a C++ shape error).
    ``spell(h, w)``: how the option is written where it was given (default ``--crop H W``)."""
    spell = spell or (lambda h, w: f"--crop {h} {w}")
    from ..graph import data_inputs

    vi = next(iter(data_inputs(model)), None) if crop is not None else None
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim] if vi else []
    if len(dims) != 4:
        return
    h, w = (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])
    fixed = (h if h > 0 else crop[0], w if w > 0 else crop[1])
    if tuple(crop) != fixed:
        shape = "×".join(str(d) if d > 0 else "?" for d in dims)
        raise InvalidOptionError(f"{spell(*crop)} does not fit the model's input {vi.name!r} ({shape}, static H and "
                                 f"W): use {spell(*fixed)}, or a model exported with a dynamic H and W")


def preprocess_for_model(model, *, size: tuple[int, int] | None = None, **options) -> Preprocess:
    """A :class:`Preprocess` whose size and channel count default to the model's static input."""
    from ..graph import data_inputs

    vi = next(iter(data_inputs(model)), None)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim] if vi else []
    layout = options.get("layout", "nchw")
    channels = 3
    if len(dims) == 4:
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
        channels = c if c in (1, 3) else 3
        if size is None and h > 0 and w > 0:
            size = (h, w)
    return Preprocess(size=tuple(size) if size else None, channels=channels, **options)


class Loader:
    """Batches of a dataset; ``shuffle``/augmentation seeded by (seed, epoch, batch)."""

    def __init__(self, data: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, augment: bool = False, prefetch: int | None = None) -> None:
        """``prefetch``: batches made ahead in a thread; 0 makes them in the caller's thread, None
        chooses (0 for ``in_memory`` data, else 2)."""
        if len(data) == 0:
            raise DataError(f"{data.where}: no samples")
        self.data = data
        self.batch_size = min(batch_size, len(data)) if drop_last else batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if prefetch is None:
            prefetch = 0 if getattr(data, "in_memory", False) else 2
        self.augment, self.prefetch = augment, max(0, prefetch)

    def batches_per_epoch(self) -> int:
        n = len(self.data)
        return max(1, n // self.batch_size) if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.data)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def _make(self, epoch: int, b: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = order[b * self.batch_size:(b + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, b]) if self.augment else None
        return self.data.batch(idx, rng)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over the data (evaluation)."""
        for _, _, x, y in self.stream(epoch, 0, stop_after_epoch=True):
            yield x, y

    def _positions(self, e: int, b: int, stop_after_epoch: bool) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """The stream made in the caller's thread."""
        while True:
            order = self._order(e)
            while b < self.batches_per_epoch():
                yield (e, b, *self._make(e, b, order))
                b += 1
            if stop_after_epoch:
                return
            e, b = e + 1, 0

    def stream(self, start_epoch: int = 0, start_batch: int = 0, *,
               stop_after_epoch: bool = False) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """(epoch, batch, x, y) from (start_epoch, start_batch) on, prefetched in a thread (``prefetch`` > 0)."""
        if not self.prefetch:
            yield from self._positions(start_epoch, start_batch, stop_after_epoch)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            e, b = start_epoch, start_batch
            try:
                while not stop.is_set():
                    order = self._order(e)
                    while b < self.batches_per_epoch() and not stop.is_set():
                        item = (e, b, *self._make(e, b, order))
                        while not stop.is_set():
                            try:
                                q.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        b += 1
                    if stop_after_epoch:
                        break
                    e, b = e + 1, 0
                q.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                q.put(exc)

        thread = threading.Thread(target=produce, name="onnxsq-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # drain so a blocked put() sees the stop flag
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
