"""Run a recipe's stages in order in a work directory, skipping what is up to date, resuming training.

Each stage reads the previous stage's model (the first reads the recipe's) and writes
``WORKDIR/NN-name.onnx`` and ``WORKDIR/NN-name.report.json``. ``WORKDIR/state.json`` (written
atomically after every change) records per stage the key it was made with:

* the SHA-256 of its input model file,
* the SHA-256 of its options (the recipe's keys, the relevant ``[data]`` settings, onnxsq's version),
* for stages that read data (train, quantize), a fingerprint of the files (path, size, mtime),

plus the SHA-256 of its output. A re-run skips a stage whose key is unchanged and whose output file
still has that hash; a change anywhere re-runs that stage, and the new output's hash then re-runs the
stages after it. A training stage is marked *running* before it starts and checkpoints to
``WORKDIR/NN-name.ckpt.npz``; a re-run with the same key resumes from that checkpoint. Evaluation
results are cached by (model hash, validation data fingerprint, evaluation settings).

``force`` re-runs everything; ``from_stage`` keeps the stages before it as they are on disk (even if
the recipe changed them: that is what it is for, and it is warned about) and re-runs it and the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InvalidOptionError
from ..model_io import load_model, save_model
from ..report import Report, write_json
from . import stages as stage_table
from .recipe import DataSpec, Recipe, StageSpec, load_recipe
from .summary import StageRow, metric_of, model_row, write_summary

log = logging.getLogger(__name__)

STATE_VERSION = 1

# on_progress(stage label, phase, done, total or None, info): "running" when a stage starts, then
# "train" per iteration (info: loss and lr), "calibrate"/"evaluate" per quantize batch, "eval" per
# batch of the validation run of a row.
Progress = Callable[[str, str, int, "int | None", str], None]


@dataclass
class PipelineResult:
    rows: list[StageRow]
    workdir: Path
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def report(self) -> Report:
        """The run as a Report: one candidate per stage (action = ran/cached/resumed/kept)."""
        rep = Report("pipeline")
        for r in self.rows:
            d = r.to_dict()
            d.pop("layer_sparsity")
            notes = d.pop("notes")
            rep.add(r.stage, r.kind, r.status, "; ".join(notes), **d)
        last = self.rows[-1] if self.rows else None
        rep.summary.update({"workdir": str(self.workdir), "stages": len(self.rows) - 1,
                            **{f"file {k}": str(v) for k, v in self.files.items()}})
        if last is not None:
            rep.summary.update({"final model": str(self.workdir / last.model) if last.kind != "input" else last.model,
                                "final metric": last.metric, "final conv sparsity": last.conv_sparsity,
                                "final int8 MAC share": last.int8_share})
        rep.warnings.extend(self.warnings)
        return rep


def file_sha(path: Path) -> str:
    """SHA-256 of a model file (and of its external data file, when there is one)."""
    h = hashlib.sha256()
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def data_fingerprint(*paths: Path | None) -> str:
    """Paths, sizes and mtimes of data files (every file under a directory); content is not read."""
    items: list[Any] = []
    for p in paths:
        if p is None:
            items.append(None)
            continue
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in files:
            st = q.stat()
            items.append([str(q.resolve()), st.st_size, st.st_mtime_ns])
    return _sha(items)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _State:
    """``state.json``: what each stage was made from, and cached evaluations."""

    def __init__(self, workdir: Path, warnings: list[str]) -> None:
        self.path = workdir / "state.json"
        self.data: dict[str, Any] = {"version": STATE_VERSION, "stages": {}, "evals": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                if loaded.get("version") == STATE_VERSION:
                    self.data = loaded
                else:
                    warnings.append(f"{self.path}: state of another onnxsq version; running every stage")
            except (OSError, ValueError, AttributeError) as exc:
                warnings.append(f"{self.path}: unreadable ({exc}); running every stage")

    @property
    def stages(self) -> dict[str, Any]:
        return self.data.setdefault("stages", {})

    @property
    def evals(self) -> dict[str, Any]:
        return self.data.setdefault("evals", {})

    def save(self) -> None:
        write_json(self.data, self.path)


@dataclass
class _Data:
    """The recipe's data with built-in sources made concrete, and their fingerprints."""

    spec: DataSpec
    train: Path | None
    val: Path | None
    calib: Path | None

    def images(self) -> bool:
        """Whether any of the data is image files (what the ``preprocess`` table applies to)."""
        s = self.spec
        return bool(s.train_labels or s.val_labels) or any(p is not None and p.is_dir()
                                                           for p in (self.train, self.val, self.calib))

    def settings(self) -> dict[str, Any]:
        s = self.spec
        return {"task": s.task, "preprocess": s.preprocess, "augment": s.augment, "ignore_label": s.ignore_label}


class Runner:
    def __init__(self, recipe: Recipe, workdir: Path, *, force: bool = False, from_stage: str | None = None,
                 on_row: Callable[[StageRow, list[StageRow]], None] | None = None,
                 on_step: Callable[[str, dict[str, Any]], None] | None = None,
                 on_progress: Progress | None = None) -> None:
        self.recipe, self.workdir, self.force = recipe, Path(workdir), force
        self.start = recipe.stage(from_stage).index if from_stage is not None else None
        self.on_row, self.on_step, self.on_progress = on_row, on_step, on_progress
        self.warnings: list[str] = []
        self.rows: list[StageRow] = []
        self._shas: set[str] = set()  # of the models in this run's rows

    def _warn(self, msg: str) -> None:
        log.warning("%s", msg)
        self.warnings.append(msg)

    # -- data -------------------------------------------------------------------------------------
    def _data(self) -> _Data:
        spec = self.recipe.data
        train, val = spec.train, spec.val
        if spec.source is not None:
            from .sources import materialize

            made = materialize(spec.source, self.workdir / "data")
            train, val = made["train"], made["val"]
        return _Data(spec, train, val, spec.calib or train)

    def _dataset(self, data: _Data, which: str) -> Any:
        from ..data.images import Preprocess
        from ..data.loader import open_dataset

        s = data.spec
        kwargs: dict[str, Any] = {"task": s.task, "pre": Preprocess(**s.preprocess)}
        if which == "train":
            if s.augment:
                from ..data.segmentation import Augment

                kwargs["augment"] = Augment(**s.augment)
            return open_dataset(data.train, labels=s.train_labels, **kwargs)
        return open_dataset(data.val, labels=s.val_labels, **kwargs)

    # -- evaluation and rows ----------------------------------------------------------------------
    def _row(self, state: _State, data: _Data, label: str, kind: str, status: str, path: Path, sha: str,
             seconds: float | None, model: Any = None) -> StageRow:
        """The table row of the model at ``path``; ``model``: that model already in memory (not read again)."""
        model = model if model is not None else load_model(path, check=False)
        row = model_row(label, kind, status, model, path)
        row.seconds = seconds
        self._shas.add(sha)
        if data.val is not None:
            key = _sha([data_fingerprint(data.val, data.spec.val_labels), data.settings(), data.spec.eval_batch_size])
            cached = state.evals.get(sha)
            if cached and cached.get("key") == key:
                summary = cached["summary"]
            else:
                import onnxsq

                tell = self.on_progress
                rep = onnxsq.evaluate(model, self._dataset(data, "val"), batch_size=data.spec.eval_batch_size,
                                      ignore_label=data.spec.ignore_label,
                                      progress=None if tell is None else
                                      (lambda done, total: tell(label, "eval", done, total, "")))
                summary = rep.to_dict()["summary"]
                state.evals[sha] = {"key": key, "summary": summary}
                state.save()
            row.metric_name, row.metric = metric_of(summary)
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row, self.rows)
        return row

    # -- stages -----------------------------------------------------------------------------------
    def _key(self, stage: StageSpec, in_sha: str, data: _Data) -> dict[str, str]:
        options = {"kind": stage.kind, "options": stage.options, "version": __version__}
        key = {"input": in_sha}
        if stage.kind == "train":
            options["data"] = data.settings()
            key["data"] = data_fingerprint(data.train, data.spec.train_labels)
        elif stage.kind == "quantize":
            options["data"] = data.settings()
            key["data"] = data_fingerprint(stage.options.get("calib") or data.calib)
        key["options"] = _sha(options)
        return key

    def _inputs(self, stage: StageSpec, data: _Data, model: Any, ckpt: Path, resume: bool) -> stage_table.StageInputs:
        inputs = stage_table.StageInputs()
        if stage.kind == "train":
            from ..data.loader import check_crop

            crop = (data.spec.augment or {}).get("crop")
            check_crop(model, tuple(crop) if crop else None, layout=(data.spec.preprocess or {}).get("layout", "nchw"),
                       spell=lambda h, w: f"[data] crop = [{h}, {w}]")
            inputs.train = self._dataset(data, "train")
            inputs.checkpoint = ckpt
            inputs.resume = ckpt if resume else None
            if stage.options.get("stage") == "qat":
                inputs.params_out = self.workdir / f"{stage.label}.params.json"
        elif stage.kind == "quantize":
            calib = stage.options.get("calib") or data.calib
            inputs.calib = _npz_or_path(calib, model)
            inputs.params_out = self.workdir / f"{stage.label}.params.json"
        return inputs

    def _run_stage(self, state: _State, stage: StageSpec, data: _Data, in_path: Path, key: dict[str, str],
                   entry: dict[str, Any] | None, model: Any = None) -> tuple[str, float, str, Any]:
        """Run one stage on ``model`` (the file at ``in_path`` when None); returns its status ("ran" or
        "resumed"), seconds, the output's sha256 and the output model (passes never mutate their input, so
        the next stage and the table row use it as it is instead of reading the file back)."""
        out = self.workdir / f"{stage.label}.onnx"
        ckpt = self.workdir / f"{stage.label}.ckpt.npz"
        interrupted = bool(entry and entry.get("status") == "running" and entry.get("key") == key)
        resume = interrupted and stage.kind == "train" and ckpt.is_file() and not self.force
        if interrupted and not resume:
            why = ("--force" if self.force else "it had not written a checkpoint yet" if stage.kind == "train"
                   else "only training stages checkpoint")
            self._warn(f"{stage.label} was interrupted; running it again from the start ({why})")
        if not resume and ckpt.exists():
            ckpt.unlink()  # a checkpoint of other inputs/options must never be resumed
        state.stages[stage.label] = {"kind": stage.kind, "key": key, "status": "running",
                                     "checkpoint": ckpt.name if stage.kind == "train" else None}
        state.save()
        log.info("%s: %s", stage.label, "resuming from its checkpoint" if resume else "running")
        if self.on_progress is not None:
            self.on_progress(stage.label, "running", 0, None, "")
        model = model if model is not None else load_model(in_path, check=False)
        inputs = self._inputs(stage, data, model, ckpt, resume)
        tell = self.on_progress
        if tell is not None and stage.kind == "quantize":
            inputs.progress = lambda done, total, phase: tell(stage.label, phase, done, total, "")
        t0 = time.perf_counter()
        result, report = _with_on_step(stage, model, inputs, data, self._step_hook())
        seconds = time.perf_counter() - t0
        if data.spec.preprocess and data.images():  # `onnxsq eval` on it then defaults to the recipe's preprocessing
            from ..data.images import Preprocess
            from ..data.stored import store

            store(result, Preprocess(**data.spec.preprocess), by=f"onnxsq pipeline ({stage.label})")
        save_model(result, out)
        report.write(self.workdir / f"{stage.label}.report.json")
        sha = file_sha(out)
        state.stages[stage.label] = {"kind": stage.kind, "key": key, "status": "done", "output": out.name,
                                     "output_sha": sha, "seconds": round(seconds, 3), "resumed": resume}
        state.save()
        if ckpt.exists():
            ckpt.unlink()
        return ("resumed" if resume else "ran"), seconds, sha, result

    def _step_hook(self) -> Callable[[str, dict[str, Any]], None] | None:
        """on_step and on_progress's "train" phase, fed by the trainer's per-iteration info."""
        on_step, tell = self.on_step, self.on_progress
        if tell is None:
            return on_step

        def hook(label: str, info: dict[str, Any]) -> None:
            if on_step is not None:
                on_step(label, info)
            tell(label, "train", int(info["iteration"]), info.get("max_iter"),
                 f"loss {info['loss']:.4f}" if "loss" in info else "")

        return hook

    def run(self) -> PipelineResult:
        wd = self.workdir
        if wd.exists() and not wd.is_dir():
            raise InvalidOptionError(f"{wd}: the work directory is a file")
        wd.mkdir(parents=True, exist_ok=True)
        state = _State(wd, self.warnings)
        data = self._data()
        in_path = self.recipe.model
        in_sha = file_sha(in_path)
        self._row(state, data, "00-input", "input", "input", in_path, in_sha, None)
        current = None  # the model at in_path when it is in memory
        for stage in self.recipe.stages:
            out = wd / f"{stage.label}.onnx"
            key = self._key(stage, in_sha, data)
            entry = state.stages.get(stage.label)
            seconds = entry.get("seconds") if entry else None
            if self.start is not None and stage.index < self.start:
                if not out.is_file():
                    raise InvalidOptionError(f"--from {self.recipe.stages[self.start - 1].name}: stage {stage.label} "
                                             f"has no output in {wd}; run without --from first")
                if not entry or entry.get("key") != key:
                    self._warn(f"{stage.label}: its inputs or options changed since {out.name} was made; "
                               "--from keeps the old output")
                status, out_sha = "kept", file_sha(out)
            elif (not self.force and self.start is None and entry and entry.get("status") == "done"
                  and entry.get("key") == key and out.is_file()
                  and (out_sha := file_sha(out)) == entry.get("output_sha")):
                log.info("%s: unchanged, skipped (output %s)", stage.label, out.name)
                status = "cached"
            else:
                status, seconds, out_sha, current = self._run_stage(state, stage, data, in_path, key, entry,
                                                                    current)
            if status in ("kept", "cached"):
                current = None  # on disk only
            in_path, in_sha = out, out_sha  # each output is hashed once
            self._row(state, data, stage.label, stage.kind, status, out, in_sha, seconds, current)
        # cached evaluations of models no longer in the flow would only pile up
        state.data["evals"] = {k: v for k, v in state.evals.items() if k in self._shas}
        state.save()
        files = write_summary(self.rows, wd, recipe=str(self.recipe.path))
        from .charts import write_charts

        charts, why = write_charts(self.rows, wd)
        if why:
            self._warn(f"charts skipped: {why}")
        files.update({p.stem: p for p in charts})
        return PipelineResult(self.rows, wd, files, self.warnings)


def _npz_or_path(calib: Path, model: Any) -> Any:
    """A training-style .npz (x, y) becomes feeds of its x; anything else goes to quantize as is."""
    if calib.suffix.lower() == ".npz" and calib.is_file():
        import numpy as np

        with np.load(calib) as z:
            if "x" in z.files and "y" in z.files:
                return stage_table.npz_feeds(calib, model)
    return calib


def _with_on_step(stage: StageSpec, model: Any, inputs: stage_table.StageInputs, data: _Data,
                  on_step: Callable[[str, dict[str, Any]], None] | None) -> Any:
    defaults = stage_table.stage_defaults(stage.kind, data.spec)
    hook = None if on_step is None or stage.kind != "train" else (lambda info: on_step(stage.label, info))
    return stage_table.run_stage(stage.kind, model, stage.options, inputs, defaults, on_step=hook)


def run_pipeline(recipe: Recipe | str | os.PathLike, workdir: str | os.PathLike, *, force: bool = False,
                 from_stage: str | None = None,
                 on_row: Callable[[StageRow, list[StageRow]], None] | None = None,
                 on_step: Callable[[str, dict[str, Any]], None] | None = None,
                 on_progress: Progress | None = None) -> PipelineResult:
    """Run ``recipe`` (a :class:`Recipe` or a recipe file) in ``workdir``; see the module docstring.

    ``on_row(row, rows_so_far)`` is called after each stage (and for the input model);
    ``on_step(stage_label, info)`` on every training iteration; ``on_progress`` (see :data:`Progress`)
    while a stage runs.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return Runner(recipe, Path(workdir), force=force, from_stage=from_stage, on_row=on_row, on_step=on_step,
                  on_progress=on_progress).run()
