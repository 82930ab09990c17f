"""What each recipe stage kind accepts and how it calls the library: the one table to adapt.

A recipe stage's keys are the options of the matching command in snake_case (``iters``,
``weight_decay``, ``threshold_fraction_mid``, ``no_verify``, ``per_channel``...), or the fields of its
config dataclass. :data:`KINDS` maps each kind to its library function and config class, the
command-line spellings that differ from the config's field names, the keys the pipeline handles
itself, and the keys a recipe may not set (the pipeline sets them).

Values are validated when the recipe is read, by building the config (so a bad value is reported
with its line before anything runs); :func:`run_stage` builds it again and calls the library.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import InvalidOptionError, OnnxsqError
from ..passes import PASSES, load
from ..report import Report

log = logging.getLogger(__name__)

# The flow's order (original-caffe-flow.md, stages 2-7); QAT takes quantize's place.
ORDER = {"l2": 0, "l1": 1, "threshold": 2, "sparse": 3, "optimize": 4, "quantize": 5, "qat": 5}


class OptionProblem(InvalidOptionError):
    """A stage option is wrong; ``key`` (when known) lets the recipe reader name its line.

    An :class:`InvalidOptionError` like any other bad option: the CLI prints it as one line (exit 1)
    wherever it escapes; only :func:`onnxsq.pipeline.recipe.parse_recipe` catches it, to add the line.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _layers(value: Any) -> Any:
    """threshold ``layer``: a table ``{pattern = fraction}`` or the command's ``["PATTERN=FRACTION"]``."""
    from ..passes.threshold.config import parse_layers

    try:
        return parse_layers(value, where="layer")
    except InvalidOptionError as exc:
        raise OptionProblem(str(exc), "layer") from None


def _strings(value: Any) -> Any:
    """A glob or a list of globs (the command's repeatable option)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise OptionProblem(f"expected a pattern or a list of patterns, got {value!r}")
    return tuple(value)


def _not(value: Any) -> Any:
    if not isinstance(value, bool):
        raise OptionProblem(f"expected true or false, got {value!r}")
    return not value


def _standalone(value: Any) -> Any:
    if not isinstance(value, bool):
        raise OptionProblem(f"expected true or false, got {value!r}")
    return "keep" if value else "affine"


def _train_call(built: Any, options: Mapping[str, Any], inputs: StageInputs,
                on_step: Callable[[dict[str, Any]], None] | None) -> tuple[tuple, dict[str, Any]]:
    if not built.checkpoint_every:
        built = dataclasses.replace(built, checkpoint_every=100)
    extra = {"params_out": inputs.params_out} if built.stage == "qat" and inputs.params_out is not None else {}
    return (inputs.train, built), {"resume": inputs.resume, "checkpoint": inputs.checkpoint, "on_step": on_step,
                                   **extra}


def _quantize_call(built: Any, options: Mapping[str, Any], inputs: StageInputs,
                   on_step: Callable[[dict[str, Any]], None] | None) -> tuple[tuple, dict[str, Any]]:
    kwargs: dict[str, Any] = {"calib": inputs.calib, "config": built}
    if options.get("params"):
        kwargs["params"] = options["params"]
    if inputs.params_out is not None:
        kwargs["params_out"] = inputs.params_out
    if inputs.progress is not None:
        kwargs["progress"] = inputs.progress
    return (), kwargs


def _config_call(built: Any, options: Mapping[str, Any], inputs: StageInputs,
                 on_step: Callable[[dict[str, Any]], None] | None) -> tuple[tuple, dict[str, Any]]:
    return (), {"config": built}


def _keywords_call(built: Any, options: Mapping[str, Any], inputs: StageInputs,
                   on_step: Callable[[dict[str, Any]], None] | None) -> tuple[tuple, dict[str, Any]]:
    return (), {"verify": True, **built}


def _threshold_spellings() -> dict[str, str]:
    """The original's ``threshold_*`` spellings, from ThresholdConfig's field metadata."""
    from ..passes.threshold.config import ThresholdConfig, options_with_original_spelling

    return options_with_original_spelling(ThresholdConfig)


@dataclass(frozen=True)
class Kind:
    """One stage kind. ``pass_name``: the pass in :data:`onnxsq.passes.PASSES` it runs (its function and
    config dataclass come from there); a kind that is no graph pass (train) names ``function`` and
    ``config`` itself. ``aliases``: recipe key → (config field or keyword, converter or None). ``call``:
    the arguments after the model, from the built config, the recipe keys and the runner's inputs."""

    pass_name: str | None = None
    function_spec: str | None = None  # "module:function", for a kind with no pass_name
    config_spec: str | None = None  # "module:Class" (a dataclass), for a kind with no pass_name
    call: Callable[..., tuple[tuple, dict[str, Any]]] = _config_call
    aliases: Mapping[str, tuple[str, Callable[[Any], Any] | None]] = field(default_factory=dict)
    runner_keys: frozenset[str] = frozenset()  # handled by the pipeline itself
    path_keys: frozenset[str] = frozenset()  # resolved against the recipe's folder, must exist
    forbidden: Mapping[str, str] = field(default_factory=dict)  # key → why the recipe cannot set it
    keywords: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)  # config=None: accepted types

    @property
    def function(self) -> str:
        return PASSES[self.pass_name].function if self.pass_name else self.function_spec

    @property
    def config(self) -> str | None:
        return PASSES[self.pass_name].config if self.pass_name else self.config_spec


KINDS: dict[str, Kind] = {
    "train": Kind(
        function_spec="onnxsq:train", config_spec="onnxsq.training.config:TrainConfig", call=_train_call,
        # the solver-file spellings TrainConfig.from_mapping also takes
        aliases={"lr_schedule": ("lr_policy", None), "base_lr": ("lr", None), "max_iter": ("iters", None),
                 "type": ("optimizer", lambda v: v.lower() if isinstance(v, str) else v)},
        path_keys=frozenset({"config"}),
        runner_keys=frozenset({"config"}),  # a solver file (JSON/TOML): merged under the stage's keys
        forbidden={"checkpoint_path": "the pipeline keeps the checkpoint in WORKDIR (NN-name.ckpt.npz)",
                   "extra": "not an option", "resume": "the pipeline resumes an interrupted stage by itself"},
    ),
    "threshold": Kind(
        pass_name="threshold",
        aliases={**{original: (name, None) for original, name in _threshold_spellings().items()},
                 "layer": ("layers", _layers), "layers": ("layers", _layers), "exclude": ("excludes", None),
                 "global": ("global_fraction", None)},
    ),
    "optimize": Kind(
        pass_name="fold-batchnorm", call=_keywords_call,
        aliases={"no_verify": ("verify", _not), "keep_standalone": ("standalone", _standalone)},
        keywords={"verify": bool, "standalone": str, "rtol": (int, float), "atol": (int, float), "seed": int,
                  "samples": int},
    ),
    "quantize": Kind(
        pass_name="quantize", call=_quantize_call,
        aliases={"exclude": ("exclude", _strings), "int16": ("int16", _strings)},
        runner_keys=frozenset({"calib", "params"}),
        path_keys=frozenset({"calib", "params"}),
        forbidden={"params_out": "the pipeline writes the parameters file to WORKDIR (NN-name.params.json)",
                   "preprocess": "image preprocessing is set once, in [data]"},
    ),
}


_import = load  # recipe.py's name for it

def config_class(kind: Kind) -> type | None:
    """The kind's config dataclass (None for a kind configured by keywords)."""
    if kind.config is None:
        return None
    try:
        return _import(kind.config)
    except (ImportError, AttributeError) as exc:
        raise InvalidOptionError(f"this onnxsq has no {kind.config.replace(':', '.')} ({exc})") from None


def known_keys(kind_name: str) -> set[str]:
    kind = KINDS[kind_name]
    cls = config_class(kind)
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set(kind.keywords)
    return (fields | set(kind.aliases) | set(kind.runner_keys)) - set(kind.forbidden)


def build_options(kind_name: str, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Any:
    """The validated config (or keyword dict) of a stage; :class:`OptionProblem` names the bad key.

    ``options`` are the recipe keys minus the runner's; ``defaults`` (from ``[data]``, e.g. ``task``)
    apply where the stage does not set them.
    """
    kind = KINDS[kind_name]
    for key in options:
        if key in kind.forbidden:
            raise OptionProblem(f"{key!r} cannot be set in a recipe: {kind.forbidden[key]}", key)
    known = known_keys(kind_name)
    mapped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in options.items():
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
            raise OptionProblem(f"unknown key {key!r} for {kind_name} stages{hint}", key)
        target, convert = kind.aliases.get(key, (key, None))
        if target in mapped:
            raise OptionProblem(f"{key!r} and {origin[target]!r} set the same option; give one", key)
        try:
            mapped[target] = convert(value) if convert else value
        except OptionProblem as exc:
            raise OptionProblem(f"{key}: {exc}", key) from None
        origin[target] = key
    for key, value in (defaults or {}).items():
        mapped.setdefault(key, value)
    cls = config_class(kind)
    if kind.config is None:
        for key, value in mapped.items():
            want = kind.keywords[key]
            if not isinstance(value, want) or isinstance(value, bool) and want in ((int, float), int):
                raise OptionProblem(f"{origin.get(key, key)}: bad value {value!r}", origin.get(key, key))
        return mapped
    try:
        built = cls(**mapped)
        if callable(getattr(built, "validate", None)):
            built.validate()  # some configs validate on demand only
        return built
    except OnnxsqError as exc:
        message = str(exc)
        key = next((origin[t] for t in sorted(origin, key=len, reverse=True)
                    if t in message or origin[t] in message or t.replace("_", "-") in message), None)
        raise OptionProblem(message, key) from None
    except (TypeError, ValueError) as exc:  # e.g. a string where a number belongs
        raise OptionProblem(f"bad value ({exc})") from None


def stage_defaults(kind_name: str, data: Any) -> dict[str, Any]:
    """Options a stage takes from ``[data]`` (a DataSpec) unless it sets them itself."""
    if kind_name == "train" and data.task:
        return {"task": data.task, "ignore_label": data.ignore_label}
    if kind_name == "train":
        return {"ignore_label": data.ignore_label}
    if kind_name == "quantize" and data.preprocess:
        from ..data.images import Preprocess

        return {"preprocess": Preprocess(**data.preprocess)}
    return {}


# -- running ------------------------------------------------------------------------------------


@dataclass
class StageInputs:
    """What the runner hands a stage besides its model and options."""

    train: Any = None  # Dataset (train stages)
    calib: Any = None  # path, or an iterable of feeds (quantize)
    checkpoint: Path | None = None
    resume: Path | None = None
    params_out: Path | None = None  # quantize, and train stage qat
    progress: Callable[[int, int | None, str], None] | None = None  # quantize: (done, total, phase) per batch


def npz_feeds(path: Path, model: onnx.ModelProto, batch: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """Feeds from a training-style ``.npz`` (``x``, ``y``): calibrate on the training images.

    quantize's own ``.npz`` reading wants arrays named after the model's inputs; a dataset file has
    ``x`` and ``y``. (quantize's ``calib_count`` caps what it reads from this iterable.)
    """
    from ..graph import data_inputs

    name = data_inputs(model)[0].name
    with np.load(path) as z:
        x = z["x"]
    for i in range(0, len(x), batch):
        yield {name: np.ascontiguousarray(x[i:i + batch])}


def _call(spec: str, *args: Any, **kwargs: Any) -> Any:
    try:
        fn = _import(spec)
    except (ImportError, AttributeError) as exc:
        raise InvalidOptionError(f"this onnxsq has no {spec.replace(':', '.')} ({exc})") from None
    return fn(*args, **kwargs)


def run_stage(kind_name: str, model: onnx.ModelProto, options: Mapping[str, Any], inputs: StageInputs,
              defaults: Mapping[str, Any] | None = None,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> tuple[onnx.ModelProto, Report]:
    """Run one stage on ``model``; returns the library's (model, report)."""
    kind = KINDS[kind_name]
    own = {k: v for k, v in options.items() if k not in kind.runner_keys}
    built = build_options(kind_name, own, defaults)
    args, kwargs = kind.call(built, options, inputs, on_step)
    return _call(kind.function, model, *args, **kwargs)
