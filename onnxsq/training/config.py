"""Training configuration: one dataclass whose sparsity keys mirror the original solver's names.

A ``--config`` file (JSON, or TOML read with the standard library's ``tomllib``) sets any field by
name; command-line flags override it. Unknown keys are refused by name, so a misspelt solver option
never goes unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, first_line
from ..passes.quantize.config import QuantizeConfig
from ..passes.threshold.config import ThresholdConfig

STAGES = ("l2", "l1", "sparse", "qat")
SCHEDULES = ("fixed", "step", "multistep", "poly", "cosine")
OPTIMIZERS = ("sgd", "adamw")
ALLOCATIONS = ("layer", "global")
CONNECT_MODES = ("WEIGHT_CONNECTED", "WEIGHT_DISCONNECTED_ELTWISE")


# Defaults of the QAT options: quantize's own (QuantizeConfig), so QAT and PTQ compare like for like, plus
# the two QAT alone has.
_PTQ = QuantizeConfig()
_THRESHOLD = {f.name: f.default for f in fields(ThresholdConfig)}  # (no instance: its checks import graph code)
QAT_DEFAULTS: dict[str, Any] = {"quantization_start_iter": None, "bits": _PTQ.bits, "weight_bits": _PTQ.weight_bits,
                                "quant_method": _PTQ.method, "weight_method": _PTQ.weight_method,
                                "percentile": _PTQ.percentile, "quant_update_every": 1}


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model and the data."""

    stage: str = "l2"
    iters: int | None = None  # exactly one of iters / epochs; neither → 1 epoch
    epochs: float | None = None
    batch_size: int = 32
    lr: float = 0.01  # Caffe's base_lr
    lr_policy: str = "fixed"  # fixed | step | multistep | poly | cosine
    gamma: float = 0.1  # step/multistep decay factor
    stepsize: int | None = None  # step: decay every `stepsize` iterations (required by step)
    stepvalue: tuple[int, ...] = ()  # multistep: iterations at which lr *= gamma
    power: float = 1.0  # poly: lr = base_lr * (1 - it / max_iter) ** power
    optimizer: str = "sgd"  # sgd (with momentum, as the original) | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2 on conv/fc weights (Caffe's weight_decay)
    l1: float = 0.0  # L1 strength: loss += l1 * sum|w| over conv/fc weights
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # onnxruntime's intra-op threads; 0: its default (one per physical core)
    task: str | None = None  # classification | segmentation; None → from the label shape
    ignore_label: int = 255
    display: int = 50  # a log line every `display` iterations
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    # Sparsity, with the original solver's names (algorithms.md §4).
    display_sparsity: int = 0
    threshold_weights: bool = False
    sparsity_threshold: float = 1e-4
    sparsity_target: float = 0.0
    sparsity_lr_mult: float = 1.0
    weight_connect_mode: str | None = None  # None → WEIGHT_DISCONNECTED_ELTWISE in the sparse stage
    sparsity_start_iter: int = -1  # < 0: no gradual sparsification
    sparsity_start_factor: float = 0.6
    sparsity_step_iter: int = 1000
    sparsity_step_factor: float = 0.01
    # caps of the gradual channelwise thresholding: threshold's own defaults (ThresholdConfig)
    threshold_value_max: float = _THRESHOLD["value_max"]
    threshold_value_maxratio: float = _THRESHOLD["value_maxratio"]
    # onnxsq extensions of the gradual thresholding (the original used 0.5 and its eligibility rule).
    sparsity_low_ratio: float = 0.5  # the "low" layer class thresholds factor * this
    sparsity_all_layers: bool = False  # also threshold layers the original found too small
    # layer: each layer thresholded to its own fraction (the original); global: one magnitude threshold
    # over all thresholded layers pooled, the factor being the pool's fraction (onnxsq.training.sparsity)
    sparsity_allocation: str = "layer"
    # Quantization-aware training (stage qat, algorithms.md §3; see onnxsq.training.qat). None: the
    # default in QAT_DEFAULTS; any of them set in another stage is an error.
    quantization_start_iter: int | None = None  # float iterations collecting ranges; None → 10% (>= 1)
    bits: int | None = None  # weights and activations (quantize's --bits)
    weight_bits: int | None = None  # overrides bits for weights (quantize's QuantizeConfig.weight_bits)
    quant_method: str | None = None  # activation range estimator: minmax | ema | percentile | mse
    weight_method: str | None = None  # minmax | mse (quantize's weight_method)
    percentile: float | None = None  # of the percentile estimator
    quant_update_every: int | None = None  # recompute the shifts every N iterations
    quant_exclude: tuple[str, ...] = ()  # node-name patterns kept float (quantize's --exclude)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise InvalidOptionError(f"--stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.lr_policy not in SCHEDULES:
            raise InvalidOptionError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, not {self.lr_policy!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidOptionError(f"--optimizer must be sgd or adamw, not {self.optimizer!r}")
        if self.iters is not None and self.epochs is not None:
            raise InvalidOptionError("give --iters or --epochs, not both")
        if self.iters is not None and self.iters <= 0 or self.epochs is not None and self.epochs <= 0:
            raise InvalidOptionError("--iters/--epochs must be positive")
        if self.batch_size <= 0:
            raise InvalidOptionError("--batch-size must be positive")
        if self.lr < 0 or self.weight_decay < 0 or self.l1 < 0:
            raise InvalidOptionError("--lr, --weight-decay and --l1 must not be negative")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise InvalidOptionError(f"--threads must be a whole number >= 0 (0: one per core), not {self.threads!r}")
        if self.device not in ("auto", "cuda", "cpu"):
            raise InvalidOptionError(f"--device must be auto, cuda or cpu, not {self.device!r}")
        if self.task not in (None, "classification", "segmentation"):
            raise InvalidOptionError(f"--task must be classification or segmentation, not {self.task!r}")
        if self.weight_connect_mode is not None and self.weight_connect_mode not in CONNECT_MODES:
            raise InvalidOptionError(
                f"weight_connect_mode must be one of {', '.join(CONNECT_MODES)}, not {self.weight_connect_mode!r}")
        if not 0.0 <= self.sparsity_target < 1.0:
            raise InvalidOptionError("sparsity_target must be in [0, 1)")
        if self.sparsity_allocation not in ALLOCATIONS:
            raise InvalidOptionError(f"sparsity_allocation must be layer or global, not {self.sparsity_allocation!r}")
        if self.sparsity_step_iter <= 0:
            raise InvalidOptionError("sparsity_step_iter must be positive")
        if self.sparsity_start_iter >= 0 and self.sparsity_target <= 0:
            raise InvalidOptionError("sparsity_start_iter needs a sparsity_target > 0 to aim at")
        self.stepvalue = tuple(int(v) for v in self.stepvalue)
        if self.lr_policy == "step" and (self.stepsize is None or self.stepsize <= 0):
            raise InvalidOptionError("--lr-schedule step needs --step-size N (config key stepsize): the number of "
                                     "iterations between two decays")
        if self.lr_policy == "multistep" and not self.stepvalue:
            raise InvalidOptionError("--lr-schedule multistep needs --milestones I1,I2,... (config key stepvalue): "
                                     "the iterations at which the rate decays")
        self._validate_qat()

    def _validate_qat(self) -> None:
        if isinstance(self.quant_exclude, str):
            self.quant_exclude = (self.quant_exclude,)
        self.quant_exclude = tuple(str(p) for p in self.quant_exclude)
        given = [k for k in QAT_DEFAULTS if getattr(self, k) is not None] + (["quant_exclude"] if self.quant_exclude
                                                                              else [])
        if self.stage != "qat":
            if given:
                raise InvalidOptionError(f"{given[0]} only applies to quantization-aware training (qat), not to "
                                         f"{self.stage} training")
            return
        from ..calibration.stats import METHODS

        for key in ("bits", "weight_bits"):
            b = getattr(self, key)
            if b is not None and not (isinstance(b, int) and 2 <= b <= 16):
                raise InvalidOptionError(f"{key} must be an integer in 2..16, not {b!r}")
        if self.quant_method is not None and self.quant_method not in METHODS:
            raise InvalidOptionError(f"quant_method must be one of {', '.join(METHODS)}, not {self.quant_method!r}")
        if self.weight_method is not None and self.weight_method not in ("minmax", "mse"):
            raise InvalidOptionError(f"weight_method must be minmax or mse, not {self.weight_method!r}")
        if self.percentile is not None and not 50.0 < self.percentile <= 100.0:
            raise InvalidOptionError(f"percentile must be in (50, 100], not {self.percentile}")
        if self.quantization_start_iter is not None and self.quantization_start_iter < 1:
            raise InvalidOptionError("quantization_start_iter must be at least 1: the float iterations before it "
                                     "collect the activation ranges")
        if self.quant_update_every is not None and self.quant_update_every < 1:
            raise InvalidOptionError("quant_update_every must be at least 1")

    def qat(self, key: str) -> Any:
        """A QAT option's value, its default where unset."""
        value = getattr(self, key)
        return QAT_DEFAULTS[key] if value is None else value

    @property
    def masked(self) -> bool:
        """True when zeros are kept exactly (weight_connect_mode, default in the sparse stage)."""
        # qat too: sparse + quantized fine-tuning keeps the zeros (a dense model has no zeros to keep)
        mode = self.weight_connect_mode or ("WEIGHT_DISCONNECTED_ELTWISE" if self.stage in ("sparse", "qat") else
                                            "WEIGHT_CONNECTED")
        return mode == "WEIGHT_DISCONNECTED_ELTWISE"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """A config from ``base`` (or the defaults) updated with ``values``; unknown keys are refused."""
        names = {f.name for f in fields(cls)} - {"extra"}
        aliases = {"base_lr": "lr", "max_iter": "iters", "lr_schedule": "lr_policy", "type": "optimizer"}
        merged = (base or cls()).to_dict()
        for key, value in values.items():
            key = aliases.get(key, key)
            if key not in names:
                raise InvalidOptionError(f"config: unknown key {key!r}")
            merged[key] = value
        if isinstance(merged.get("optimizer"), str):
            merged["optimizer"] = merged["optimizer"].lower()
        return cls(**merged)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict (TOML by suffix ``.toml``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidOptionError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise InvalidOptionError(f"{path}: TOML configs need Python >= 3.11; use JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - json and tomllib raise their own error types
        raise InvalidOptionError(f"{path}: cannot parse config ({first_line(exc)}); use JSON or TOML") from None
    if not isinstance(data, dict):
        raise InvalidOptionError(f"{path}: config must be a mapping of solver keys to values")
    return data
