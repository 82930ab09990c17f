"""The options of :func:`onnxsq.passes.quantize.quantize`: the one place their defaults live.

Kept apart from the pass (and light: numpy only) so that the CLI builds its options from these
defaults without importing graph code, and QAT (:data:`onnxsq.training.config.QAT_DEFAULTS`) takes the
same defaults, so QAT and PTQ compare like for like.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ...calibration.stats import METHODS
from ...data.images import Preprocess
from ...errors import InvalidOptionError

# Chosen by measurement on the real-model zoo (bench/fidelity.py; the table and the gains are in the
# README): per-channel weights with the auto estimator (shift and signedness of least histogram error) and
# power-of-two equalization; min/max per tensor trailed quantize_static's best free-scale result there.
DEFAULT_METHOD = "auto"
WEIGHT_METHODS = ("minmax", "mse")
WEIGHT_ROUNDINGS = ("nearest", "gptq")
CARRIERS = ("uint8", "native")  # how signed activations are stored (QuantizeConfig.carrier)
PROMOTIONS = ("float", "int16")  # what --target-sqnr does with the layers it picks
FUSIONS = ("none", "leaky", "all")  # which activations the target applies to a layer's accumulator (.placement_fuse)
# --effort: presets over the steps, each also its own option (an option left at its default takes the
# preset's value; one given another value keeps it). Why these: the README's fidelity table (bench/fidelity.py).
EFFORTS: dict[str, dict[str, object]] = {
    # min/max ranges: calibration without histograms
    "fast": {"method": "minmax", "equalize": False, "align_scales": False, "pooled_headroom": 0},
    "default": {},
    "max": {"weight_rounding": "gptq", "finetune": True, "align_check": True, "report_samples": 8, "report_crops": 2,
            "calib_crops": 4},
}
# what --effort max would also do where it could, and why it does not here (where onnxruntime-training is
# not installed: onnxsq.training.finetune drops the line where fine-tuning ran)
EFFORT_MAX_SKIPPED = ("label-free fine-tuning (QAT with the float model as teacher on the calibration images): "
                      "needs onnxruntime-training (the training environment), not installed here",)
EFFORT_MAX_OFF = ("label-free fine-tuning: turned off (--no-finetune)",)


@dataclass
class QuantizeConfig:
    """Options of :func:`quantize` (the CLI flags of ``onnxsq quantize``)."""

    bits: int = 8  # weights and activations
    weight_bits: int | None = None  # overrides ``bits`` for weights (CLI --weight-bits)
    per_channel: bool = True  # one shift per output channel of each weight (opset 13; --per-tensor: one per tensor)
    exclude: tuple[str, ...] = ()
    method: str = DEFAULT_METHOD  # minmax | ema | percentile | mse | auto
    weight_method: str = "mse"  # minmax | mse (exact error on the weights)
    # nearest | gptq (each layer's output error on the report samples; .rounding). None: as --effort says (max: gptq)
    weight_rounding: str | None = None
    percentile: float = 99.99
    # mse/auto: a tensor read only by an elementwise function (Sigmoid, Tanh, HardSigmoid, x * Sigmoid(x), ...)
    # takes the shift and signedness of least error through that function (.through)
    through_readers: bool = True
    calib_count: int | None = None
    batch_size: int = 1  # per run; larger batches cost activation memory (8: ~6x the peak) for no speed on CPU
    preprocess: Preprocess | None = None
    report_samples: int = 4  # per-layer SQNR report; each sample costs ~2 float inferences (see the docstring)
    # seeded random crops of each report sample (onnxsq.data.crops) that join them: GPTQ's input statistics and
    # its check, --align-check and the report then judge on more than the few framings calibration saw
    # (each crop costs what a report sample does). None: as --effort says (max: 2, else none)
    report_crops: int | None = None
    # seeded crops of each kept sample whose statistics join calibration's, kept only where the pass from them
    # scores higher on the report samples (.calib_crops; costs a second resolve, insert and report). None: as
    # --effort says (max: 4, else none)
    calib_crops: int | None = None
    # bits of headroom on a classifier head after a global pool (.pooled): one value per channel per image,
    # so calibration sees few draws of it (vietcombank_captcha +2.6 dB; 0 under --effort fast)
    pooled_headroom: int = 1
    fold_batchnorm: bool = True
    bias_correction: bool = True  # fold each layer's mean weight-quantization error into its bias
    equalize: bool = True  # power-of-two cross-layer equalization after folding (exact in float)
    # constant scale/shift chains before Conv layers folded into them (..fold_forward; exact in float): a
    # HardSwish -> Mul -> Add -> Conv block is then rounded once, not twice (ppocrv5_rec 11.3 -> 13.5 dB); also
    # gates .shift_conv (a per-channel shift after a ReLU as a depthwise 1x1 Conv): both rewrite the float graph
    fold_forward: bool = True
    # a SiLU / HardSwish / GELU output read only by layers that take an offset exactly (Conv without padding,
    # Gemm, MatMul) lifted by its lower bound to >= 0 and quantized unsigned, the layers' biases taking the
    # offset back (.offset; exact in float; gated by fold_forward like the other float rewrites)
    offset_outputs: bool = True
    # a free scale per group of activations carried by the weights around it (.align; exact in float): each
    # domain between layers (through ReLU-type ops, pooling, Add/Concat) takes the factor of least expected error
    align_scales: bool = True
    # .align into float islands' outputs (HardSwish, SiLU, a product of activations): a product by the factor after
    # the function, inside its island (a target folds it into the function's table). The README's table: +0.5 dB
    # mean over the trained zoo, pooled and median (ppocr_mobile_v2_cls +2.5, ppocrv5_rec -0.6)
    align_island_outputs: bool = True
    align_islands: bool = False  # also their inputs (the function reads a product by 1 / factor): both ways
    # with report samples: quantize again without alignment from the same statistics and keep the better whole
    # model on them (.align.checked; costs a second resolve, insert and report: --effort max)
    align_check: bool | None = None  # None: as --effort says (max: on)
    integer_only: bool = False  # no float island where an integer form exists (look-up tables, products)
    sensitivity: bool = False  # per-layer output SQNR with that layer alone quantized (.sensitivity)
    # native: int8 for signed tensors, every zero point 0 (what integer targets read: symmetric power-of-two);
    # uint8: every 8-bit activation uint8, a signed one at zero point 128 (the same integers; onnxruntime fuses a
    # layer into its integer kernel only where input and output share one type: 0.45x -> 0.83x float on
    # YOLOv8n-like, bench/bench_latency.py) -- for deployment on onnxruntime, asked for by name
    carrier: str = "native"
    # Sigmoid, LeakyRelu and Mul of two activations quantized where onnxruntime has integer kernels for them
    # (QLinearSigmoid/LeakyRelu/Mul): SiLU and squeeze-excitation gates leave float (.placement). Off by default:
    # on the trained zoo it cost up to 2.6 dB (ddddocr_common_old; cls -1.5, with GPTQ -3.3) for +0.4..+0.7 on
    # three others; for onnxruntime deployment (with --carrier uint8) it is what fuses SiLU nets
    ort_kernels: bool = False
    # activations the target applies to a layer's accumulator, so no quantization point between the two
    # (.placement_fuse; Relu/Clip always): none (int8 kernels reading an 8-bit input: TFLite's, onnxruntime's);
    # leaky: LeakyRelu/PRelu (exact there, as Relu); all: also SiLU, HardSwish, Sigmoid, Tanh, HardSigmoid.
    # Off by default: it assumes a target that does it (the README's table: what it gains where)
    fuse_activations: str = "none"
    # 8-bit models with per-channel weights: 7-bit weights where onnxruntime's x86 kernels without VNNI pair u8 x s8
    # products in int16 and saturate (vpmaddubsw; Conv, Gemm, MatMul; not depthwise). None (auto): where this
    # onnxruntime does (onnxsq.calibration.pairs asks it), so its sessions compute the exact integers; True:
    # always (a model for every onnxruntime CPU); False: never (an exact target). --weight-bits overrides;
    # per tensor it costs more than it saves: 8 bits there
    pair_safe: bool | None = None
    target_sqnr: float | None = None  # keep the fewest most sensitive layers float to reach this output SQNR (dB)
    # float: runs anywhere, the opset unchanged; int16: the layers stay integer (TIDL-class targets), opset 21
    promote: str = "float"
    int16: tuple[str, ...] = ()  # layers (patterns as --exclude) with 16-bit weights and outputs (.wide)
    histograms: bool = False  # each activation's calibration histogram in the report (--report-html draws them)
    # label-free fine-tuning (onnxsq.training.finetune; onnxruntime-training only): the weights train with the
    # float model as teacher, the shifts fixed, on the calibration samples but every `finetune_holdout`-th
    # one, and are kept only where those held-out samples' output SQNR rises by finetune_min_gain
    finetune: bool | None = None  # None: as --effort says (max: on)
    finetune_iters: int = 250
    finetune_lr: float = 0.02  # AdamW, cosine to 0; in units of each weight's quantization step
    finetune_batch: int = 2
    finetune_holdout: int = 2  # every 2nd calibration sample is held out (at least one)
    finetune_crops: int = 8  # random crops of each calibration image (training and held out)
    finetune_features: int = 0  # intermediate layer outputs the student also matches (0: the outputs only)
    finetune_min_gain: float = 0.5  # dB of held-out output SQNR the fine-tuned model must gain to be kept
    finetune_refit: bool = True  # once kept: trained again from the same start on every sample (held-out ones too)
    effort: str = "default"  # fast | default | max: a preset over the options above (EFFORTS)

    def resolved(self) -> QuantizeConfig:
        """This config with its ``effort`` preset applied to the options still at their defaults."""
        if self.effort not in EFFORTS:
            raise InvalidOptionError(f"--effort must be one of {', '.join(EFFORTS)}, not {self.effort!r}")
        base = QuantizeConfig()
        changes = {k: v for k, v in EFFORTS[self.effort].items() if getattr(self, k) == getattr(base, k)}
        return dataclasses.replace(self, **changes) if changes else self

    def validate(self) -> None:
        for name, b in (("--bits", self.bits), ("weight bits", self.weight_bits or self.bits)):
            if not 2 <= b <= 16:
                raise InvalidOptionError(f"{name} must be in 2..16, not {b}")
        if self.weight_method not in WEIGHT_METHODS:
            raise InvalidOptionError(f"weight method must be minmax or mse, not {self.weight_method!r}")
        if self.weight_rounding is not None and self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise InvalidOptionError(f"--weight-rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, "
                                     f"not {self.weight_rounding!r}")
        if self.method not in METHODS:
            raise InvalidOptionError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise InvalidOptionError(f"percentile must be in (50, 100], not {self.percentile}")
        if self.calib_count is not None and self.calib_count < 1:
            raise InvalidOptionError(f"--calib-count must be at least 1, not {self.calib_count}")
        if self.report_samples < 0:
            raise InvalidOptionError(f"report samples must be 0 or more, not {self.report_samples}")
        for flag, n in (("--report-crops", self.report_crops), ("--calib-crops", self.calib_crops)):
            if n is not None and n < 0:
                raise InvalidOptionError(f"{flag} must be 0 or more, not {n}")
        if not 0 <= self.pooled_headroom < self.bits:
            raise InvalidOptionError(f"--pooled-headroom must be in 0..{self.bits - 1} bits, "
                                     f"not {self.pooled_headroom}")
        if self.batch_size < 1:
            raise InvalidOptionError(f"batch size must be at least 1, not {self.batch_size}")
        if self.carrier not in CARRIERS:
            raise InvalidOptionError(f"--carrier must be one of {', '.join(CARRIERS)}, not {self.carrier!r}")
        if self.fuse_activations not in FUSIONS:
            raise InvalidOptionError(f"--fuse-activations must be one of {', '.join(FUSIONS)}, "
                                     f"not {self.fuse_activations!r}")
        if self.promote not in PROMOTIONS:
            raise InvalidOptionError(f"--promote must be one of {', '.join(PROMOTIONS)}, not {self.promote!r}")
        if self.target_sqnr is not None and not math.isfinite(self.target_sqnr):
            raise InvalidOptionError(f"--target-sqnr must be a number of dB, not {self.target_sqnr}")
        for name, v in (("--finetune-iters", self.finetune_iters), ("finetune batch", self.finetune_batch),
                        ("finetune holdout", self.finetune_holdout)):
            if v < 1:
                raise InvalidOptionError(f"{name} must be at least 1, not {v}")
        if not (math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise InvalidOptionError(f"--finetune-lr must be a positive number, not {self.finetune_lr}")
        if not math.isfinite(self.finetune_min_gain):
            raise InvalidOptionError(f"finetune min gain must be a number of dB, not {self.finetune_min_gain}")
        if (self.sensitivity or self.target_sqnr is not None) and self.report_samples < 1:
            raise InvalidOptionError("--sensitivity and --target-sqnr measure on the report samples: "
                                     "--report-samples must be at least 1")

    @property
    def wbits(self) -> int:
        return self.weight_bits or self.bits
