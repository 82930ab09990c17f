"""Read and validate a pipeline recipe (TOML): the model, its data, and an ordered list of stages.

    model = "../digits_cnn.onnx"          # paths are relative to the recipe file's folder
    [data]
    source = "sklearn-digits"             # or: train = "train.npz", val = "val.npz" (+ *_labels lists)
    task = "classification"               # optional: else from the labels
    [[stage]]
    kind = "train"                        # train | threshold | optimize | quantize
    stage = "l2"                          # train only: l2 | l1 | sparse | qat
    iters = 600                           # the command's options, snake_case

Stages run in the flow's order, any subset: L2 → L1 → threshold → sparse → optimize → quantize (PTQ)
or QAT. Everything is checked before anything runs; a problem is one :class:`InvalidOptionError`
line ``RECIPE:LINE: ...``. tomllib's own errors carry their line; for keys and values the line is
found by scanning the text (TOML parsers do not keep positions).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import InvalidOptionError, OnnxsqError
from ..training.config import STAGES
from . import sources, stages

TOP_KEYS = {"model", "data", "stage", "description"}
PATH_DATA_KEYS = ("train", "train_labels", "val", "val_labels", "calib")
PRE_KEYS = ("size", "mean", "std", "channel_order", "layout", "channels")
AUGMENT_KEYS = ("scale_prob", "scale_min", "scale_max", "crop", "mirror")
DATA_KEYS = {*PATH_DATA_KEYS, *PRE_KEYS, *AUGMENT_KEYS, "task", "source", "ignore_label", "eval_batch_size"}
TASKS = ("classification", "segmentation")
_STAGE_WORDS = ", ".join(STAGES[:-1]) + f" or {STAGES[-1]}"  # "l2, l1, sparse or qat"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DataSpec:
    """``[data]``: where training/validation/calibration data come from and how to read it."""

    train: Path | None = None
    train_labels: Path | None = None
    val: Path | None = None
    val_labels: Path | None = None
    calib: Path | None = None  # default: the training data
    task: str | None = None
    source: dict[str, Any] | None = None  # a built-in source ({"name": ..., **params})
    preprocess: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    ignore_label: int = 255
    eval_batch_size: int = 64

    @property
    def has_train(self) -> bool:
        return self.train is not None or self.source is not None


@dataclass(frozen=True)
class StageSpec:
    index: int  # 1-based position in the recipe
    kind: str  # train | threshold | optimize | quantize
    name: str  # l2, l1, sparse, qat, threshold, optimize, quantize, or the recipe's `name`
    options: dict[str, Any]  # the recipe's keys (kind/name removed), paths resolved
    line: int

    @property
    def label(self) -> str:
        """``NN-name``: the stem of the stage's files in the work directory."""
        return f"{self.index:02d}-{self.name}"


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: Path
    data: DataSpec
    stages: tuple[StageSpec, ...]
    description: str = ""

    def stage(self, which: str) -> StageSpec:
        """A stage by name, label (``02-l1``) or 1-based number."""
        for s in self.stages:
            if which in (s.name, s.label, str(s.index), f"{s.index:02d}"):
                return s
        names = ", ".join(s.label for s in self.stages)
        raise InvalidOptionError(f"no stage {which!r} in {self.path.name} (stages: {names})")


class _Lines:
    """Line numbers of tables and keys, found by scanning the TOML text."""

    HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"'-]+?)\s*\]\]?\s*(#.*)?$")
    KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*[.=]""")

    def __init__(self, text: str) -> None:
        self.top: dict[str, int] = {}
        self.data: dict[str, int] = {}
        self.stages: list[dict[str, int]] = []  # per [[stage]]: "" → header line, key → line
        section: dict[str, int] | None = self.top
        in_string = False
        for no, line in enumerate(text.splitlines(), 1):
            if line.count('"""') % 2 or line.count("'''") % 2:
                in_string = not in_string
                if not in_string:
                    continue
            if in_string:
                continue
            header = self.HEADER.match(line)
            if header:
                name = header.group(1).strip("\"'")
                if line.lstrip().startswith("[[") and name == "stage":
                    self.stages.append({"": no})
                    section = self.stages[-1]
                elif name == "data" or name.startswith("data."):
                    self.top.setdefault("data", no)
                    section = self.data
                    if name != "data":
                        self.data.setdefault(name.split(".", 1)[1].split(".")[0], no)
                else:
                    self.top.setdefault(name.split(".")[0], no)
                    section = None
                continue
            key = self.KEY.match(line)
            if key and section is not None:
                section.setdefault(next(g for g in key.groups() if g), no)

    def stage(self, index: int, key: str | None = None) -> int:
        if index - 1 < len(self.stages):
            s = self.stages[index - 1]
            return s.get(key, s[""]) if key else s[""]
        return self.top.get("stage", 1)


def _fail(path: Path, line: int | None, message: str) -> InvalidOptionError:
    where = f"{path}:{line}" if line else str(path)
    return InvalidOptionError(f"{where}: {' '.join(message.split())}")


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; every problem is one ``RECIPE:LINE: ...`` error."""
    path = Path(path)
    if not path.is_file():
        raise InvalidOptionError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"{path}: cannot read the recipe ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"line (\d+)", msg)
        raise _fail(path, int(m.group(1)) if m else None, f"not valid TOML: {msg}") from None
    return parse_recipe(doc, path, text)


def parse_recipe(doc: dict[str, Any], path: Path, text: str = "") -> Recipe:
    """Validate an already-parsed recipe (``text`` locates lines in messages)."""
    lines = _Lines(text)
    base = path.resolve().parent

    def fail(line: int | None, msg: str) -> InvalidOptionError:
        return _fail(path, line, msg)

    for key in doc:
        if key not in TOP_KEYS:
            raise fail(lines.top.get(key), f"unknown top-level key {key!r} (known: {', '.join(sorted(TOP_KEYS))})")
    if "model" not in doc:
        raise fail(None, "no `model = \"...\"`: the ONNX model the first stage starts from")
    if not isinstance(doc["model"], str):
        raise fail(lines.top.get("model"), "model must be a path string")
    model = _path(base, doc["model"])
    if not model.is_file():
        raise fail(lines.top.get("model"), f"model {doc['model']!r}: no such file ({model})")
    data = _data(doc.get("data", {}), base, lines, fail)
    raw = doc.get("stage", [])
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise fail(lines.top.get("stage"), "stages are [[stage]] tables")
    if not raw:
        raise fail(None, "no [[stage]]: a recipe runs at least one stage")
    specs = [_stage(i, s, base, data, lines, fail) for i, s in enumerate(raw, 1)]
    _check_order_and_names(specs, lines, fail)
    return Recipe(path, model, data, tuple(specs), str(doc.get("description", "")))


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _data(raw: Any, base: Path, lines: _Lines, fail) -> DataSpec:
    if not isinstance(raw, dict):
        raise fail(lines.top.get("data"), "[data] must be a table")
    for key in raw:
        if key not in DATA_KEYS:
            raise fail(lines.data.get(key, lines.top.get("data")),
                       f"unknown key {key!r} in [data] (known: {', '.join(sorted(DATA_KEYS))})")
    paths: dict[str, Path] = {}
    for key in PATH_DATA_KEYS:
        if key in raw:
            if not isinstance(raw[key], str):
                raise fail(lines.data.get(key), f"data.{key} must be a path string")
            p = _path(base, raw[key])
            if not p.exists():
                raise fail(lines.data.get(key), f"data.{key} {raw[key]!r}: no such file or directory ({p})")
            paths[key] = p
    for key in ("train_labels", "val_labels"):
        if key in paths and key.split("_")[0] not in paths:
            raise fail(lines.data.get(key), f"data.{key} needs data.{key.split('_')[0]} (the image list)")
    source = raw.get("source")
    if source is not None:
        source = _source(source, lines, fail)
        if "train" in paths or "val" in paths:
            raise fail(lines.data.get("source"), "data.source makes train and val data; drop data.train/data.val")
    task = raw.get("task")
    if task is None and source is not None:
        task = sources.TASKS[source["name"]]
    if task is not None and task not in TASKS:
        raise fail(lines.data.get("task"), f"data.task must be classification or segmentation, not {task!r}")
    pre = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in PRE_KEYS}
    augment = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in AUGMENT_KEYS}
    for group, cls_path in ((pre, "onnxsq.data.images:Preprocess"), (augment, "onnxsq.data.segmentation:Augment")):
        if not group:
            continue
        try:
            stages._import(cls_path)(**group)
        except (OnnxsqError, TypeError, ValueError) as exc:
            key = next((k for k in group if k in str(exc) or k.replace("_", "-") in str(exc)), next(iter(group)))
            raise fail(lines.data.get(key), f"data.{key}: {exc}") from None
    ints = {}
    for key, default in (("ignore_label", 255), ("eval_batch_size", 64)):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or (key == "eval_batch_size" and value <= 0):
            raise fail(lines.data.get(key), f"data.{key} must be a{' positive' if key != 'ignore_label' else 'n'} "
                                            f"integer, not {value!r}")
        ints[key] = value
    return DataSpec(**paths, task=task, source=source, preprocess=pre, augment=augment, **ints)


def _source(value: Any, lines: _Lines, fail) -> dict[str, Any]:
    line = lines.data.get("source")
    spec = {"name": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else None
    if spec is None or not isinstance(spec.get("name"), str):
        raise fail(line, 'data.source is a name ("sklearn-digits") or a table with `name` and parameters')
    if spec["name"] not in sources.SOURCES:
        raise fail(line, f"unknown data source {spec['name']!r} (known: {', '.join(sources.SOURCES)})")
    params = inspect.signature(sources.SOURCES[spec["name"]]).parameters
    for key in spec:
        if key != "name" and key not in params:
            raise fail(line, f"data source {spec['name']!r} has no parameter {key!r} "
                             f"(known: {', '.join(params)})")
    return spec


def _stage(index: int, raw: dict[str, Any], base: Path, data: DataSpec, lines: _Lines, fail) -> StageSpec:
    header = lines.stage(index)
    where = f"stage {index}"
    kind = raw.get("kind")
    if kind is None:
        raise fail(header, f"{where}: no `kind` (one of {', '.join(stages.KINDS)})")
    if kind not in stages.KINDS:
        raise fail(
            lines.stage(index, "kind"), f"{where}: unknown stage kind {kind!r} (known: {', '.join(stages.KINDS)})"
        )
    options = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    if kind == "train":
        stage = options.get("stage")
        if stage is None:
            raise fail(header, f"{where}: a train stage needs `stage` ({_STAGE_WORDS})")
        if not isinstance(stage, str) or stage not in STAGES:
            raise fail(lines.stage(index, "stage"), f"{where}: unknown training stage {stage!r} "
                                                    f"({_STAGE_WORDS})")
        if not data.has_train:
            raise fail(header, f"{where}: a train stage needs training data ([data] train or source)")
        name = stage
    else:
        name = kind
    name = raw.get("name", name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail(lines.stage(index, "name"), f"{where}: name must be letters, digits, '.', '_' or '-', not {name!r}")
    where = f"stage {index} ({name})"
    kind_spec = stages.KINDS[kind]
    for key in sorted(kind_spec.path_keys & set(options)):
        value = options[key]
        if not isinstance(value, str):
            raise fail(lines.stage(index, key), f"{where}: {key} must be a path string")
        options[key] = _path(base, value)
        if not options[key].exists():
            raise fail(lines.stage(index, key), f"{where}: {key} {value!r}: no such file or directory ({options[key]})")
    merged = dict(options)
    if kind == "train" and "config" in options:
        from ..training.config import load_config_file  # a solver file, merged under the stage's keys

        try:
            merged = {**load_config_file(options["config"]), **options}
        except OnnxsqError as exc:
            raise fail(lines.stage(index, "config"), f"{where}: {exc}") from None
    if kind == "quantize" and "calib" not in options and data.calib is None and not data.has_train:
        raise fail(header, f"{where}: quantize needs calibration data (`calib` here, or [data] calib/train/source)")
    own = {k: v for k, v in merged.items() if k not in kind_spec.runner_keys}
    try:
        stages.build_options(kind, own, defaults=stages.stage_defaults(kind, data))
    except stages.OptionProblem as exc:
        line = lines.stage(index, exc.key) if exc.key in options else lines.stage(index, "config" if "config" in options
                                                                                     else None)
        raise fail(line, f"{where}: {exc}") from None
    return StageSpec(index, kind, name, merged, header)


def _check_order_and_names(specs: list[StageSpec], lines: _Lines, fail) -> None:
    seen: dict[str, StageSpec] = {}
    previous: StageSpec | None = None
    for s in specs:
        if s.name in seen:
            raise fail(s.line, f"stage {s.index}: a second stage named {s.name!r} (stage {seen[s.name].index}); "
                               "give one a different `name`")
        seen[s.name] = s
        step = _step(s)
        if previous is not None and stages.ORDER[step] < stages.ORDER[_step(previous)]:
            raise fail(s.line, f"stage {s.index} ({step}) after stage {previous.index} ({_step(previous)}): "
                               "the flow runs l2 → l1 → threshold → sparse → optimize → quantize or qat")
        previous = s


def _step(s: StageSpec) -> str:
    return s.options["stage"] if s.kind == "train" else s.kind
