"""``onnxsq simulate MODEL.q.onnx|DIR --data FEEDS``: the model in integer arithmetic, bit-exact."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import input_shape_option, preprocess_options, quiet, report_option, warn_ignored

ROUNDINGS = ("half-even", "half-up", "half-away", "floor")


@click.command("simulate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Inputs: a .npz keyed by input name, a folder of images or .npy/.npz, "
                                            "or module.py:function.")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the graph outputs (float: integer x 2**-shift) to this .npz, keyed by output name.")
@report_option
@click.option("--rounding", type=click.Choice(ROUNDINGS), default="half-even", show_default=True,
              help="Rounding of every requantizing right shift (half-even: ONNX QuantizeLinear).")
@click.option("--acc-bits", type=click.IntRange(8, 64), default=32, show_default=True,
              help="Accumulator width: overflow is flagged (worst case and observed) and wraps.")
@click.option("--float", "float_model", type=click.Path(dir_okay=False, path_type=Path),
              help="The float model: report the simulation's error against it.")
@click.option("--count", type=click.IntRange(min=1), help="Use at most N samples [default: all].")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Samples per batch (models with a dynamic batch axis).")
@click.option("--no-compare", is_flag=True, help="Skip the comparison with onnxruntime (faster).")
@preprocess_options
@input_shape_option
def command(model: Path, data: str, outputs_path: Path | None, report_path: Path | None, rounding: str,
            acc_bits: int, float_model: Path | None, count: int | None, batch_size: int, no_compare: bool, size,
            mean, std, channel_order: str, layout: str, input_shapes: dict[str | None, tuple[int, ...]] | None) -> None:
    """Run MODEL (an onnxsq power-of-two QDQ model, or an export-int package DIR) in integer arithmetic.

    Every layer: int8/uint8 activations, int8 weights, int32 accumulation and bias, requantization by
    an arithmetic right shift with --rounding, saturation; ops without an integer form run in float
    between their DequantizeLinear and QuantizeLinear (float islands, listed in the report). The report
    compares every layer and output with onnxruntime's optimized (fused integer) run of the model.

    An image folder takes the --mean/--std/--channel-order/--layout the model stores (onnxsq quantize
    on images writes them) where they are not given; a given one that differs is warned about.
    """
    from ...calibration.sources import Preprocess, batches, open_source
    from ...model_io import load_model
    from ...simulate.api import SimulateConfig, simulate
    from ...simulate.package import is_package, read_package
    from ...simulate.program import load_program
    from ..render import finish

    qmodel = None
    if is_package(model):
        program = read_package(model)
        if not no_compare:
            warn_ignored("the onnxruntime comparison", "a package holds no ONNX model (compare with MODEL.q.onnx)")
        no_compare = True
    else:
        qmodel = load_model(model)
        program = load_program(qmodel)
    size = tuple(size) if size else _size_from_shapes(input_shapes, layout)
    options = dict(mean=mean, std=std, channel_order=channel_order, layout=layout)
    stored_note = None
    if qmodel is not None and _image_folder(data):  # images take the preprocessing quantize stored, as eval does
        from ...data.stored import stored_size
        from .eval import _preprocessing

        options, stored_note = _preprocessing(qmodel, options)
        if size is None and (size := stored_size(qmodel)) is not None:  # dynamic H/W: the calibration's size
            stored_note = f"{stored_note}; --size {size[0]} {size[1]} (stored)"
    pre = Preprocess(size=size, **options)
    source = open_source(data, qmodel if qmodel is not None else _inputs_model(program),
                         preprocess=None if pre == Preprocess() else pre)
    feeds = (feed for feed, _ in batches(source, source.inputs, batch_size=batch_size, count=count))
    cfg = SimulateConfig(rounding=rounding, acc_bits=acc_bits, compare=not no_compare, float_model=float_model)
    if float_model is not None:
        load_model(float_model)  # a one-line error for a bad file
    outputs, report = simulate(program, feeds, model=qmodel, config=cfg)
    report.warnings.extend(source.warnings)
    if outputs_path is not None:
        _write_npz(outputs, outputs_path)
        report.summary["outputs"] = str(outputs_path)
    report.summary["model"] = str(model)
    if stored_note:
        report.summary["preprocessing"] = stored_note
    finish(report, report_path, quiet=quiet(),
           detail_keys=["bits", "signed", "shift", "steps", "max_step", "differ", "acc_worst_bits", "acc_seen_bits",
                        "overflow", "saturated", *(["vs_half_even"] if rounding != "half-even" else [])])


def _image_folder(data: str) -> bool:
    """``data`` is a folder of images (not of .npy/.npz tensors, which take no preprocessing)."""
    from ...data.images import is_image

    path = Path(data)
    if not path.is_dir():
        return False
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return not any(p.suffix.lower() in (".npy", ".npz") for p in files) and any(is_image(p) for p in files)


def _size_from_shapes(input_shapes: dict | None, layout: str) -> tuple[int, int] | None:
    """Image H W from the only --input-shape, when given."""
    if not input_shapes or len(input_shapes) != 1:
        return None
    dims = next(iter(input_shapes.values()))
    if len(dims) != 4:
        return None
    return (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])


def _inputs_model(program):
    """A graph holding only the package's inputs (what the data sources read)."""
    from onnx import helper

    vis = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dt), [d if d else None for d in dims])
           for name, (dt, dims) in program.inputs.items()]
    return helper.make_model(helper.make_graph([], "inputs", vis, []))


def _write_npz(arrays: dict, path: Path) -> None:
    import os

    import numpy as np

    from ...errors import InvalidOptionError

    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidOptionError(f"{path}: cannot write the outputs ({exc.strerror or exc})") from None
