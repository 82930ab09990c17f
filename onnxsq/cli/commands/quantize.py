"""``onnxsq quantize MODEL --calib DATA``: power-of-two int8 QDQ quantization (post-training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ...calibration.stats import METHODS
from ...passes.quantize.config import (
    CARRIERS,
    EFFORTS,
    FUSIONS,
    PROMOTIONS,
    WEIGHT_METHODS,
    WEIGHT_ROUNDINGS,
    QuantizeConfig,
)
from ..options import common_model_command, input_shape_option, preprocess_options, quiet, resolve_output, warn_ignored

DEFAULTS = QuantizeConfig()  # the one place the defaults live; the flags show them


@click.command("quantize")
@common_model_command("quant")
@click.option("--calib", help="Calibration data: image or .npy/.npz folder, a .npz file, or module.py:function.")
@click.option("--calib-count", type=int, help="Use at most N calibration samples [default: all].")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True,
              help="Calibration samples per onnxruntime run (models with a dynamic batch axis).")
@click.option("--bits", type=int, default=DEFAULTS.bits, show_default=True,
              help="Bits of weights and activations (2..16).")
@click.option("--weight-bits", type=int, help="Bits of the weights only [default: --bits].")
@click.option("--per-channel/--per-tensor", default=DEFAULTS.per_channel, show_default=True,
              help="One power-of-two scale per output channel of each weight, or one per weight tensor (targets "
                   "with one shift per tensor).")
@click.option(
    "--exclude", multiple=True, metavar="PATTERN", help="Keep nodes whose name matches in float (repeatable)."
)
@click.option("--effort", type=click.Choice(list(EFFORTS)), default=DEFAULTS.effort, show_default=True,
              help="fast: min/max ranges; default: error-driven ranges, equalization, free scales carried by the "
                   "weights, bias correction; max: also GPTQ weight rounding. Options given another value than "
                   "their default keep it.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULTS.method, show_default=True,
              help="Activation range estimator.")
@click.option("--weight-method", type=click.Choice(WEIGHT_METHODS), default=DEFAULTS.weight_method,
              show_default=True,
              help="Weight shift: fit every weight, or the smallest squared error.")
@click.option("--weight-rounding", type=click.Choice(WEIGHT_ROUNDINGS), default=None,
              help="Round weights to nearest, or against each layer's output error on the report samples (gptq) "
                   "[default: gptq with --effort max, else nearest].")
@click.option("--finetune/--no-finetune", default=None,
              help="Label-free fine-tuning as the last step (onnxruntime-training only): the weights train against "
                   "the float model on the calibration images, shifts fixed, and are kept only where held-out "
                   "images improve [default: with --effort max].")
@click.option("--finetune-iters", type=int, default=DEFAULTS.finetune_iters, show_default=True,
              help="Fine-tuning steps.")
@click.option("--finetune-lr", type=float, default=DEFAULTS.finetune_lr, show_default=True,
              help="Fine-tuning learning rate (AdamW, cosine), in units of each weight's quantization step.")
@click.option("--report-samples", type=int, default=DEFAULTS.report_samples, show_default=True,
              help="Calibration samples the per-layer SQNR report runs on (0: no report).")
@click.option("--report-crops", type=int, default=None,
              help="Random crops of each report sample that join them: GPTQ, --align-check and the report judge "
                   "on them too [default: 2 with --effort max, else 0].")
@click.option("--calib-crops", type=int, default=None,
              help="Random crops of each report sample that join calibration, kept only where the model from them "
                   "scores higher on the report samples [default: 4 with --effort max, else 0].")
@click.option("--pooled-headroom", type=int, default=DEFAULTS.pooled_headroom, show_default=True,
              help="Bits of headroom on the tensors of a head after a global pool (one value per channel per "
                   "image: calibration sees few) [0 with --effort fast].")
@click.option("--no-bias-correction", is_flag=True, help="Keep the float biases (no mean weight-error correction).")
@click.option("--no-equalize", is_flag=True,
              help="No cross-layer equalization (power-of-two factors between Conv pairs through ReLU-like ops).")
@click.option("--no-fold-forward", is_flag=True,
              help="Leave constant scale/shift ops before Conv layers (learnable affine blocks) unfolded, and "
                   "per-channel shifts after a ReLU as Adds (not depthwise 1x1 Convs).")
@click.option("--no-offset-outputs", is_flag=True,
              help="Keep SiLU/HardSwish/GELU outputs signed where only unpadded Conv, Gemm or MatMul layers read "
                   "them (default: lifted by the function's lower bound to unsigned, the biases taking it back).")
@click.option("--no-align-scales", is_flag=True,
              help="No free scales carried by the weights (one factor per group of activations between layers, "
                   "into their weights; every Q/DQ scale a power of two either way).")
@click.option("--no-align-island-outputs", is_flag=True,
              help="Leave float islands' outputs (HardSwish, SiLU, products of activations) out of those factors "
                   "(default: a product by the factor after the function, inside its island).")
@click.option("--align-islands", is_flag=True, default=DEFAULTS.align_islands,
              help="Also carry those factors into float islands' inputs (HardSwish, SiLU, Sigmoid...) as a "
                   "product inside the island.")
@click.option("--align-check/--no-align-check", default=None,
              help="Quantize again without scale alignment and keep the better whole model on the report samples "
                   "[default: with --effort max].")
@click.option("--integer-only", is_flag=True, default=DEFAULTS.integer_only,
              help="No float islands where an integer form exists: elementwise activations become look-up "
                   "tables (Q/DQ around them), Mul of two tensors an integer product.")
@click.option("--carrier", type=click.Choice(CARRIERS), default=DEFAULTS.carrier, show_default=True,
              help="How signed activations are stored: native int8 (zero points 0, what integer targets read), or "
                   "uint8 at zero point 128 (one type everywhere, so onnxruntime fuses every layer into its integer "
                   "kernels: faster there). The same integers.")
@click.option("--sensitivity", is_flag=True,
              help="Measure each layer's output SQNR with that layer alone quantized (on the report samples).")
@click.option("--target-sqnr", type=float, metavar="DB",
              help="Keep the fewest most sensitive layers float (or 16-bit: --promote) so that the output SQNR "
                   "reaches DB.")
@click.option("--promote", type=click.Choice(PROMOTIONS), default=DEFAULTS.promote, show_default=True,
              help="What --target-sqnr does with the layers it picks: keep them float, or quantize them at 16 bits "
                   "(targets that run 16-bit layers; needs opset 21, the model is converted).")
@click.option("--ort-kernels/--no-ort-kernels", default=DEFAULTS.ort_kernels, show_default=True,
              help="Quantize Sigmoid, LeakyRelu and Mul of two activations as onnxruntime's integer kernels run them "
                   "(QLinearSigmoid, QLinearLeakyRelu, QLinearMul: faster there, with --carrier uint8), or keep them "
                   "float (islands; the more faithful on the zoo).")
@click.option("--fuse-activations", type=click.Choice(FUSIONS), default=DEFAULTS.fuse_activations, show_default=True,
              help="Activations the target applies to a layer's accumulator (no quantization point between them; "
                   "Relu/Clip always): leaky = LeakyRelu, PRelu; all = also SiLU, HardSwish, Sigmoid, Tanh, "
                   "HardSigmoid. Only for targets that do so.")
@click.option("--pair-safe/--no-pair-safe", default=None,
              help="7-bit weights for layers that onnxruntime's x86 kernels without VNNI multiply in u8 x s8 pairs "
                   "(those pairs saturate at int16), or 8 bits everywhere. Default: as this onnxruntime "
                   "multiplies (7 bits only where its pairs saturate; the report says which).")
@click.option("--int16", multiple=True, metavar="PATTERN",
              help="Quantize the weights and outputs of the layers whose name matches at 16 bits (repeatable; "
                   "opset 21).")
@click.option("--report-html", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained page: SQNR through the network, sensitivity, histograms and ranges.")
@click.option("--params", "params_in", type=click.Path(dir_okay=False, path_type=Path),
              help="Use these parameters (JSON) instead of calibrating the tensors it names.")
@click.option("--params-out", type=click.Path(dir_okay=False, path_type=Path), help="Write the parameters (JSON).")
@click.option("--stats", "stats", multiple=True, metavar="FILE|DIR|'GLOB'",
              help="Quantize from these statistics (onnxsq calibrate's shards, all of them: files, a folder of "
                   ".stats, or a quoted pattern; repeatable) instead of calibrating; --calib then only feeds the "
                   "report.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Calibrate in N local processes, one shard each (same result as one) [default: 1].")
@preprocess_options
@input_shape_option
def command(model: Path, output: Path | None, in_place: bool, report_path: Path | None, **o: Any) -> None:
    """Quantize MODEL to power-of-two int8 QDQ (scales 2**-shift, zero points 0), calibrating on --calib.

    Calibration images take --size, else the model's static H W, else --input-shape's, else 224.
    """
    from ...model_io import save_model
    from ...passes import PASSES
    from ..render import finish, phase_progress

    quantize = PASSES["quantize"].load()
    _require_data()
    out = resolve_output(model, output, "quant", in_place)
    cfg, pre = _config(model, o)
    _warn_finetune_unused(o, cfg)
    if o["stats"] and o["jobs"]:
        warn_ignored("--jobs", "--stats gives the statistics: nothing is calibrated")
    with phase_progress(quiet=quiet()) as advance:  # one bar per phase (calibrate, evaluate)
        result, report = quantize(model, o["calib"], config=cfg, params=o["params_in"], progress=advance,
                                  params_out=o["params_out"], stats=_stats_files(o["stats"]) or None,
                                  jobs=o["jobs"] or 1)
    if _image_folder(o["calib"]):  # eval then defaults to the preprocessing the calibration used
        from ...data.stored import store

        store(result, pre, by="onnxsq quantize")
    save_model(result, out)
    report.summary["output"] = str(out)
    if o["report_html"] is not None:
        from ..report_html import write_html

        page = write_html(report.to_dict(), o["report_html"], f"onnxsq quantize {model.name}")
        report.summary["report_html"] = str(page)
    finish(report, report_path, quiet=quiet(),
           detail_keys=["bits", "signed", "shift", "w_shift", "range", "clipped", "sqnr_db"]
           + (["sensitivity_db"] if cfg.sensitivity or cfg.target_sqnr is not None else []))


def _config(model: Path, o: dict[str, Any]) -> tuple[Any, Any]:
    """The options as the pass's config (and the calibration images' preprocessing)."""
    from ...data.images import Preprocess
    from ...passes import PASSES

    size = tuple(o["size"]) if o["size"] else None
    pre = Preprocess(size=_calib_size(model, o["calib"], size, o["input_shapes"], o["layout"]), mean=o["mean"],
                     std=o["std"], channel_order=o["channel_order"], layout=o["layout"])
    cfg = PASSES["quantize"].config_class()(
        bits=o["bits"], weight_bits=o["weight_bits"], per_channel=o["per_channel"], exclude=o["exclude"],
        method=o["method"], weight_method=o["weight_method"], weight_rounding=o["weight_rounding"],
        calib_count=o["calib_count"], finetune=o["finetune"], finetune_iters=o["finetune_iters"],
        finetune_lr=o["finetune_lr"],
        batch_size=o["batch_size"], report_samples=o["report_samples"],
        report_crops=o["report_crops"], calib_crops=o["calib_crops"],
        pooled_headroom=o["pooled_headroom"], bias_correction=not o["no_bias_correction"],
        equalize=not o["no_equalize"], fold_forward=not o["no_fold_forward"],
        offset_outputs=not o["no_offset_outputs"], integer_only=o["integer_only"],
        align_scales=not o["no_align_scales"], align_islands=o["align_islands"],
        align_island_outputs=not o["no_align_island_outputs"], align_check=o["align_check"],
        carrier=o["carrier"], fuse_activations=o["fuse_activations"],
        ort_kernels=o["ort_kernels"], pair_safe=o["pair_safe"], sensitivity=o["sensitivity"],
        target_sqnr=o["target_sqnr"], promote=o["promote"], int16=o["int16"], effort=o["effort"],
        histograms=o["report_html"] is not None, preprocess=None if pre == Preprocess() else pre)
    return cfg, pre


def _warn_finetune_unused(o: dict[str, Any], cfg: Any) -> None:
    """--finetune-iters/--finetune-lr given while fine-tuning is off: say so by name."""
    if cfg.resolved().finetune:
        return
    for key, flag in (("finetune_iters", "--finetune-iters"), ("finetune_lr", "--finetune-lr")):
        if o[key] != getattr(DEFAULTS, key):
            warn_ignored(flag, "fine-tuning is off (--finetune, or --effort max)")


def _stats_files(values: tuple[str, ...]) -> list[Path]:
    """``--stats`` values as files: a folder gives its ``*.stats``, a pattern (``'part*.stats'``, quoted so
    the shell leaves it) its matches, in name order; one that names nothing is an error naming it."""
    import glob

    from ...errors import InvalidOptionError

    files: list[Path] = []
    for v in values:
        path = Path(v)
        found = sorted(path.glob("*.stats")) if path.is_dir() else (
            [Path(f) for f in sorted(glob.glob(v))] if glob.has_magic(v) else [path])
        if not found:
            why = "no *.stats in the folder" if path.is_dir() else "the pattern matches nothing"
            raise InvalidOptionError(f"--stats {v}: no statistics there ({why})")
        files += found
    return files


def _require_data() -> None:
    """No calibration data and no parameters: say which option is missing (the pass would count tensors)."""
    from ...errors import InvalidOptionError

    given = click.get_current_context().params
    if not any(given.get(k) for k in ("calib", "params_in", "stats")):
        raise InvalidOptionError("quantize needs --calib DATA to calibrate on (an image or .npy/.npz folder, a .npz "
                                 "file, or module.py:function), or --params FILE from an earlier run")


def _calib_size(model: Path, calib: str | None, size: tuple[int, int] | None,
                input_shapes: dict[str | None, tuple[int, ...]] | None, layout: str) -> tuple[int, int] | None:
    """The calibration image size: --size; else, for a model with a dynamic H or W, --input-shape's
    or the default image size (onnxsq.shapes.image_size); None: the model's static size."""
    import onnx

    from ...shapes import image_size

    if size is not None:
        if input_shapes:
            warn_ignored("--input-shape", "--size sets the calibration image size")
        return size
    if not _image_folder(calib):
        if input_shapes:
            warn_ignored("--input-shape", "it sizes calibration images, and --calib gives none")
        return None
    try:  # the graph only (a model with external data leaves it on disk); the pass loads and checks it
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by quantize() in one line
        return None
    return image_size(proto, input_shapes, layout)


def _image_folder(calib: str | None) -> bool:
    """Whether --calib is a folder of images (open_source reads images only where it finds no tensors)."""
    from ...data.images import is_image

    path = Path(calib) if calib else None
    if path is None or not path.is_dir():
        return False
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return any(is_image(p) for p in files) and not any(p.suffix.lower() in (".npy", ".npz") for p in files)
