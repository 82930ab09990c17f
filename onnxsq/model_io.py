"""Load and save ONNX models: external data, atomic writes, IR version and opsets kept.

Every command reads through :func:`load_model` and writes through :func:`save_model`, so bad input
always becomes a one-line :class:`~onnxsq.errors.ModelLoadError` and the input file is never touched.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .errors import InvalidOptionError, ModelLoadError, first_line
from .proto_stream import copy_fields, read_model, write_model

log = logging.getLogger(__name__)

ModelLike = onnx.ModelProto | str | os.PathLike

# protobuf cannot serialize a message of 2 GiB or more; keep a margin for the graph itself.
PROTO_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = PROTO_LIMIT - 64 * 2**20
SKELETON_LOCATION = "onnxsq-skeleton-no-data"
# The oldest IR version that carries each default-domain opset (what that ONNX release wrote), and the
# newest IR onnxruntime(-training) 1.19 loads: a pass that raises the opset raises the IR only this far.
IR_FOR_OPSET = {10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
MAX_IR = 10
STREAM_READ_BYTES = 16 << 20  # larger files are parsed piece by piece (peak memory: the model, not twice it)


def model_nbytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size, without serializing (which fails past 2 GiB) or copying the weights."""
    total = sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer)
    try:
        graph_only = onnx.ModelProto()
        copy_fields(model, graph_only, skip="graph")
        copy_fields(model.graph, graph_only.graph, skip="initializer")
        return total + graph_only.ByteSize()
    except Exception:  # noqa: BLE001 - a graph too large to size is certainly over the limit
        return PROTO_LIMIT + 1


def skeleton(model: onnx.ModelProto, *, min_bytes: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` without its large weights: main-graph initializers with ``min_bytes`` or
    more of ``raw_data`` become graph inputs of the same name, type and shape.

    For what reads a model's structure but never those values (onnx.checker, shape inference,
    planning): copying or serializing a large model's weights costs their size again, once per copy.
    Small initializers keep their data because shape inference reads some (Reshape shapes, Resize
    scales). Runnable when the caller feeds the weights (onnxruntime then uses them without a copy).
    """
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip="initializer")
    inputs = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if len(init.raw_data) < max(min_bytes, 1):
            out.graph.initializer.add().CopyFrom(init)
        elif init.name not in inputs:
            out.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return out


def weight_arrays(model: onnx.ModelProto, *, min_bytes: int = 4096) -> dict[str, np.ndarray]:
    """The initializers :func:`skeleton` (same ``min_bytes``) turns into inputs, as numpy arrays."""

    return {
        i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if len(i.raw_data) >= max(min_bytes, 1)
    }


def _check_raw_sizes(model: onnx.ModelProto) -> None:
    """What onnx.checker (>= 1.18) checks of the initializers :func:`skeleton` leaves out."""
    for init in model.graph.initializer:
        n = len(init.raw_data)
        if not n or init.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        try:
            size = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except Exception:  # noqa: BLE001 - packed types (4-bit, ...) have no fixed byte size here
            continue
        need = size * math.prod(init.dims)
        if n < need:
            raise onnx.checker.ValidationError(f"TensorProto (tensor name: {init.name}) raw_data size ({n} bytes) "
                                               f"is too small for the declared shape and type ({need} bytes required).")


def _parse(path: Path) -> onnx.ModelProto:
    size = path.stat().st_size
    if size < STREAM_READ_BYTES:
        return onnx.load(str(path), load_external_data=False)
    with open(path, "rb") as f:
        return read_model(f, size)  # never the file's bytes and the parsed model together


def load_model(src: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Return a ModelProto the caller may mutate.

    A ModelProto argument is deep-copied (the caller's object is never mutated); a path is read with
    its external data. Problems become :class:`ModelLoadError` naming the file.
    """
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        if check:
            check_model(model, where="model")
        return model
    path = Path(src)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    try:
        model = _parse(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for garbage input
        raise ModelLoadError(f"{path}: not a valid ONNX model (cannot parse: {first_line(exc)})") from None
    if not model.HasField("graph") or model.ir_version == 0 or not model.opset_import:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph, IR version or opset; truncated?)")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - onnx raises OSError, ValueError or its own types here
        raise ModelLoadError(f"{path}: cannot read its external data ({first_line(exc)})") from None
    if check:
        check_model(model, where=str(path))
    log.debug("loaded %s (IR %d, opsets %s)", path, model.ir_version, opsets(model))
    return model


def check_model(model: onnx.ModelProto, *, where: str = "model") -> None:
    """Run onnx.checker (with shape inference off) and turn a rejection into a one-line error."""
    try:
        if model_nbytes(model) > EXTERNAL_THRESHOLD:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "m.onnx"
                # Saving with external data moves the tensors out of the proto: never do it to the caller's.
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                _write(copy, p, external=True)
                del copy
                onnx.checker.check_model(str(p))
        else:
            # The checker never reads raw_data beyond its presence (only typed value fields are
            # counted against dims), so checking the skeleton is the same check without serializing
            # and re-parsing the weights in C++ (twice their size, transiently).
            _check_raw_sizes(model)
            onnx.checker.check_model(skeleton(model, min_bytes=1))
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{where}: rejected by onnx.checker: {first_line(exc)}") from None


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Opset imports as ``{domain: version}`` (the default domain as ``""``)."""
    return {o.domain: o.version for o in model.opset_import}


def default_opset(model: onnx.ModelProto) -> int:
    return opsets(model).get("", opsets(model).get("ai.onnx", 0))


def _write(model: onnx.ModelProto, path: Path, *, external: bool) -> None:
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        with open(path, "wb") as f:
            write_model(model, f)  # piece by piece: no serialized copy of the whole model


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` atomically (aside, then rename); external data when it would pass 2 GB.

    ``external_data=None`` decides by size. The model is checked with onnx.checker first, so a
    rejected model never replaces a good file.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InvalidOptionError(f"{path}: output is a directory")
    if not path.parent.exists():
        raise InvalidOptionError(f"{path.parent}: output directory does not exist")
    external = model_nbytes(model) > EXTERNAL_THRESHOLD if external_data is None else external_data
    if check:
        check_model(model, where=f"output {path}")
    # The temporary files live next to the target so os.replace stays a same-filesystem rename.
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            tmp_path = Path(tmp) / path.name
            # Saving with external data rewrites the tensors' locations inside the proto: work on a copy.
            to_write = model
            if external:
                to_write = onnx.ModelProto()
                to_write.CopyFrom(model)
            _write(to_write, tmp_path, external=external)
            data = Path(tmp) / (path.name + ".data")
            if data.exists():
                os.replace(data, path.parent / data.name)
            os.replace(tmp_path, path)
    except OSError as exc:  # disk full, permissions: a problem of the output location, not a bug
        raise InvalidOptionError(f"{path}: cannot write the model ({exc.strerror or first_line(exc)})") from None
    log.info("wrote %s%s", path, " (+ external data)" if external else "")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (existing or not)."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()
