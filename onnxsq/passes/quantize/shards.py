"""Calibration apart from quantization: ``calibrate`` (one shard of a calibration set), quantize from
statistics files, and ``jobs`` local shard processes.

``calibrate(model, calib, shard=(I, N))`` runs quantize's own steps up to calibration (load, fold,
equalize, plan: the very float model quantize would run) and returns the statistics of shard ``I`` of
``N`` (:mod:`onnxsq.calibration.units`) as a :class:`~onnxsq.calibration.stats_file.CalibrationStats`;
``quantize(model, stats=[...])`` merges them (:func:`~onnxsq.calibration.stats_file.merge_stats`: the
one-pass statistics, bit for bit) and quantizes exactly as one pass would. ``quantize(jobs=N)``
starts N processes (spawned: no state shared with the caller) that calibrate one shard each, with the
cores split between them, while the caller loads and plans.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...calibration.collect import Progress, collect_stats, runnable
from ...calibration.stats import HIST_METHODS
from ...calibration.stats_file import CalibrationStats, fingerprint, merge_stats
from ...calibration.units import shard_items, unit_batches, unit_items
from ...errors import DataError, InvalidOptionError, OnnxsqError
from ...model_io import ModelLike, save_model
from .config import QuantizeConfig
from .params import QuantizeContext

log = logging.getLogger(__name__)


def calibrate(model: ModelLike, calib: Any, *, config: QuantizeConfig | None = None,
              shard: tuple[int, int] | None = None, progress: Progress | None = None,
              threads: int = 0) -> CalibrationStats:
    """The calibration statistics of ``model`` on shard ``(I, N)`` of ``calib`` (all of it by default),
    mergeable with the other shards' (:func:`onnxsq.calibration.stats_file.merge_stats`).
    ``threads``: onnxruntime's intra-op threads (0: its default)."""
    from .bias import means_wanted
    from .ptq import open_calib, prepare

    cfg = config or QuantizeConfig()
    cfg.validate()
    ctx, graph, meta, _, _, _ = prepare(model, cfg)
    todo = list(ctx.plan.activations)
    means = means_wanted(ctx.plan.weights, {}, graph, True) if ctx.cfg.bias_correction else {}
    float_model, float_weights = runnable(graph, meta)
    del graph, ctx
    source = open_calib(calib, cfg, float_model, float_weights)
    unit = unit_items(source, cfg.batch_size)
    if shard is not None or source.size() is not None:
        first, end, units = shard_items(source, cfg.batch_size, shard or (0, 1), cfg.calib_count)
        count = None
    else:  # one pass over a source of unknown size
        first, end, units, count = 0, None, None, cfg.calib_count
    seen: list[int] = [first // unit - 1]

    def noted(batches):
        for b in batches:
            seen[0] = b[2]
            yield b

    batches = noted(unit_batches(source, batch_size=cfg.batch_size, count=count, items=(first, end)))
    stats, _, samples = collect_stats(float_model, todo, batches, histogram=cfg.method in HIST_METHODS,
                                      progress=progress, total=None if end is None else end - first,
                                      weights=float_weights, means=means, allow_empty=True, threads=threads)
    hi = math.ceil(end / unit) if end is not None else seen[0] + 1
    return CalibrationStats(fingerprint(float_model, float_weights), cfg.method in HIST_METHODS, stats, means,
                            samples, hi if units is None else units, [(first // unit, hi)], list(source.warnings))


# the fingerprint of a pass's own statistics handed to its second pass (.target) at another opset: the
# same float computation (the version converter renames nothing), checked tensor by tensor below
SAME_RUN = "this quantize run"


def from_stats(ctx: QuantizeContext, todo: list[str], stats: Sequence[Any], calib: Any,
               float_model: onnx.ModelProto, float_weights: dict[str, np.ndarray], clock: Any, *, keep: int = 0
               ) -> tuple[list[dict], int]:
    """Set ``ctx.stats`` and ``ctx.means`` from merged statistics; the first ``keep`` samples of ``calib``
    (when given: the report's, and those the Softmax ranges measure on). Statistics of another model, with
    parts missing or lacking a tensor are an error."""
    from .ptq import open_calib

    cfg, report = ctx.cfg, ctx.report
    merged = merge_stats(stats)
    if merged.model not in (SAME_RUN, fingerprint(float_model, float_weights)):
        raise DataError("the statistics were computed on another model (or with other --no-equalize / "
                        "folding options): calibrate this model with the same options")
    missing = merged.missing()
    if missing:
        gaps = ", ".join(f"{lo}..{hi - 1}" for lo, hi in missing[:3])
        raise DataError(f"the statistics cover {merged.units - sum(h - lo for lo, h in missing)} of {merged.units} "
                        f"calibration units: units {gaps} are missing (a shard left out?)")
    if cfg.method in HIST_METHODS and not merged.histogram:
        raise InvalidOptionError(f"--method {cfg.method} needs histograms; the statistics have none (they were "
                                 "calibrated with --method minmax or ema)")
    lacking = [t for t in todo if t not in merged.tensors] + [t for t in ctx.means if t not in merged.means]
    if lacking:
        raise DataError(f"the statistics lack {len(lacking)} tensor(s) this quantization needs (e.g. {lacking[0]!r}): "
                        "calibrate with the same --exclude / --per-channel / bias correction options")
    ctx.stats = {t: merged.tensors[t] for t in todo}
    ctx.means = {t: merged.means[t] for t in ctx.means}
    report.warnings.extend(merged.warnings)
    report.summary["stats_parts"] = len(stats)
    kept: list[dict] = []
    if calib is not None and keep:
        source = open_calib(calib, cfg, float_model, float_weights)
        kept = [f for f, _, _ in unit_batches(source, batch_size=cfg.batch_size, count=keep)]
    clock.lap("calibrate")
    return kept, merged.samples


def _shard_worker(model: str, calib: Any, cfg: QuantizeConfig, shard: tuple[int, int],
                  threads: int) -> CalibrationStats:
    return calibrate(model, calib, config=cfg, shard=shard, threads=threads)


class Jobs:
    """Shard processes in flight; :meth:`result` waits for them and returns their statistics. As a
    context manager: an exception inside stops the processes (instead of waiting for them at exit)."""

    def __init__(self, pool: ProcessPoolExecutor, futures: list[Future], tmp: tempfile.TemporaryDirectory | None):
        self.pool, self.futures, self.tmp = pool, futures, tmp

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is not None:
            self.stop()

    def stop(self) -> None:
        """Cancel what has not started and end the running processes (terminate, then kill what is left)."""
        procs = dict(getattr(self.pool, "_processes", None) or {})  # the executor has no public kill
        self.pool.shutdown(wait=False, cancel_futures=True)
        procs.update(getattr(self.pool, "_processes", None) or {})
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.join(timeout=5)
            if proc.exitcode is None:  # still starting up, or ignoring SIGTERM: no process is left behind
                proc.kill()
                proc.join(timeout=5)
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def result(self, progress: Progress | None = None) -> list[CalibrationStats]:
        try:
            out = []
            for f in self.futures:
                try:
                    out.append(f.result())
                except OnnxsqError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a dead worker (killed, out of memory) or its bug
                    raise DataError(f"a calibration process failed: {type(exc).__name__}: {exc}") from None
                if progress is not None:
                    progress(sum(s.samples for s in out), None, "calibrate")
            return out
        finally:
            self.pool.shutdown(cancel_futures=True)
            if self.tmp is not None:
                self.tmp.cleanup()
                self.tmp = None


def start_jobs(model: ModelLike, calib: Any, cfg: QuantizeConfig, jobs: int) -> Jobs:
    """Start ``jobs`` processes calibrating shard ``i`` of ``jobs`` each, the CPU cores split between them."""
    if not isinstance(calib, (str, os.PathLike)):
        raise InvalidOptionError("--jobs needs --calib as a folder or a .npz (a path each process can read)")
    tmp = None
    if not isinstance(model, (str, os.PathLike)):
        tmp = tempfile.TemporaryDirectory(prefix="onnxsq-jobs-")
        path = Path(tmp.name) / "model.onnx"
        save_model(model, path)
        model = path
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(_shard_worker, os.fspath(model), os.fspath(calib), cfg, (i, jobs), threads)
               for i in range(jobs)]
    log.info("calibrating in %d processes of %d thread(s) each", jobs, threads)
    return Jobs(pool, futures, tmp)
