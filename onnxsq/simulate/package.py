"""The deployment package of ``onnxsq export-int``: ``model.json`` (the integer program, documented in
the README, section "onnxsq simulate and export-int") and ``weights.npz`` (int8 weights, int32
biases, the look-up tables of ``lut`` layers, and the few plain constants the layers read: shapes,
clip bounds, float-island constants).

:func:`write_package` and :func:`read_package` round-trip a :class:`~.program.Program` exactly, so
``onnxsq simulate DIR`` computes what ``onnxsq simulate MODEL`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InvalidOptionError, ModelLoadError, OnnxsqError, first_line
from .islands import FloatRunner
from .lut import Table, build_table
from .program import Const, Layer, Program, QType, Step

FORMAT = "onnxsq-int"
VERSION = 1
JSON_NAME = "model.json"
NPZ_NAME = "weights.npz"


class PackageError(OnnxsqError):
    """An export-int package is missing, unreadable or of another format version."""


def is_package(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / JSON_NAME).is_file()


def _shift_json(shift: np.ndarray | None) -> Any:
    if shift is None:
        return None
    shift = np.asarray(shift)
    return int(shift.ravel()[0]) if shift.size == 1 else [int(s) for s in shift.ravel()]


def requant_shift(program: Program, layer: Layer) -> Any:
    """The right shift that requantizes the layer's result (per output channel after a per-channel
    weight), statically: MAC ``s_in + s_w - s_out``; sum/concat ``max(s_in) - s_out``; product
    ``s_a + s_b - s_out``; others ``s_in - s_out``. None for float layers."""
    if layer.kind != "int" or layer.out is None:
        return None

    def shift_of(name: str) -> np.ndarray | None:
        if name in program.dq:
            return np.asarray(program.tensors[program.dq[name]].shift)
        c = program.consts.get(name)
        return None if c is None or c.shift is None else c.shift

    known: dict[str, np.ndarray] = {}
    for step in layer.steps:
        ins = [known.get(i, shift_of(i)) for i in step.inputs if i]
        ins = [s for s in ins if s is not None]
        if not ins:
            continue
        if step.op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Mul"):
            value = ins[0].ravel()[0] + (ins[1].ravel() if len(ins) > 1 else 0)
        elif step.op in ("Add", "Sum", "Sub", "Concat"):
            value = np.max([s.max() for s in ins])
        else:
            value = ins[0]
        known.update((o, np.asarray(value)) for o in step.outputs if o)
    final = known.get(layer.source)
    return None if final is None else _shift_json(np.asarray(final) - layer.out.shift)


def _attrs_json(attrs: dict[str, Any], key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            arrays[f"attr:{key}:{k}"] = v
            out[k] = {"tensor": f"attr:{key}:{k}"}
        else:
            out[k] = v
    return out


def to_json(program: Program, source: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The package's JSON document and its arrays."""
    arrays: dict[str, np.ndarray] = {}
    used = {i for lay in program.layers for s in lay.steps for i in s.inputs} | set(program.outputs)
    consts = {}
    for name, c in program.consts.items():
        if name not in used:
            continue
        key = f"const:{name}"
        arrays[key] = c.values
        consts[name] = {"array": key, "dtype": str(c.values.dtype), "shift": _shift_json(c.shift), "axis": c.axis,
                        "shape": list(c.shift.shape) if c.shift is not None and c.shift.size > 1 else None}
    layers = []
    runner = FloatRunner(program.opsets, program.float_types, program.ir_version)
    for i, lay in enumerate(program.layers):
        steps = [{"op": s.op, "domain": s.domain, "name": s.name, "inputs": s.inputs, "outputs": s.outputs,
                  "attrs": _attrs_json(s.attrs, f"{i}:{j}", arrays)} for j, s in enumerate(lay.steps)]
        layers.append({"name": lay.name, "kind": lay.kind, "op": lay.op, "inputs": lay.inputs, "source": lay.source,
                       "output": lay.output, "out": lay.out.to_json() if lay.out else None,
                       "requant_shift": requant_shift(program, lay), "reason": lay.reason, "steps": steps})
        if lay.kind == "lut":
            table = lay.table or build_table(program, lay, runner, "half-even")
            arrays[f"lut:{i}"], arrays[f"lut_clipped:{i}"] = table.values, table.clipped
            layers[-1]["table"] = {"values": f"lut:{i}", "clipped": f"lut_clipped:{i}", "low": table.low}
    doc = {
        "format": FORMAT, "version": VERSION, "producer": f"onnxsq {__version__}", "source_model": source,
        "opsets": program.opsets, "ir_version": program.ir_version,
        "inputs": [{"name": k, "dtype": str(dt), "dims": list(dims)} for k, (dt, dims) in program.inputs.items()],
        "outputs": program.outputs,
        "tensors": {k: v.to_json() for k, v in program.tensors.items()},
        "dequantized": program.dq,
        "constants": consts,
        "layers": layers,
        "float_islands": [lay.name for lay in program.islands],
        "float_types": program.float_types,
    }
    return doc, arrays


def write_package(program: Program, out_dir: str | os.PathLike, source: str = "") -> Path:
    """Write ``model.json`` and ``weights.npz`` into ``out_dir`` (created; each file atomically)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        doc, arrays = to_json(program, source)
        tmp_npz = out / f".{NPZ_NAME}.tmp.npz"
        np.savez(tmp_npz, **arrays)
        os.replace(tmp_npz, out / NPZ_NAME)
        tmp = out / f".{JSON_NAME}.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, out / JSON_NAME)
    except OSError as exc:
        raise InvalidOptionError(f"{out}: cannot write the package ({exc.strerror or exc})") from None
    return out


def _attrs_from(attrs: dict[str, Any], arrays) -> dict[str, Any]:
    return {k: (np.asarray(arrays[v["tensor"]]) if isinstance(v, dict) and "tensor" in v else v)
            for k, v in attrs.items()}


def read_package(path: str | os.PathLike) -> Program:
    """The program of an export-int package (one-line :class:`PackageError` when it is not one)."""
    root = Path(path)
    try:
        doc = json.loads((root / JSON_NAME).read_text())
        arrays = dict(np.load(root / NPZ_NAME, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise PackageError(f"{root}: not a readable export-int package ({first_line(exc)})") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise PackageError(f"{root}: package format {doc.get('format')!r} version {doc.get('version')!r}; "
                           f"this onnxsq reads {FORMAT} version {VERSION}")
    try:
        return _program(doc, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{root}: a broken export-int package ({type(exc).__name__}: {first_line(exc)})") from None


def _program(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> Program:
    consts = {}
    for name, c in doc["constants"].items():
        shift = c["shift"]
        if shift is not None:
            shift = np.asarray(shift, dtype=np.int64).reshape(c["shape"] if c["shape"] else ())
        consts[name] = Const(arrays[c["array"]], shift, c["axis"])
    layers = []
    for lay in doc["layers"]:
        steps = [Step(s["op"], s["inputs"], s["outputs"], _attrs_from(s["attrs"], arrays), s["domain"], s["name"])
                 for s in lay["steps"]]
        out = QType(**lay["out"]) if lay["out"] else None
        layers.append(Layer(lay["name"], lay["kind"], lay["op"], steps, lay["inputs"], lay["source"], lay["output"],
                            out, lay["reason"]))
        if lay.get("table"):
            t = lay["table"]
            layers[-1].table = Table(arrays[t["values"]], arrays[t["clipped"]].astype(bool), int(t["low"]))
    inputs = {i["name"]: (np.dtype(i["dtype"]), tuple(i["dims"])) for i in doc["inputs"]}
    return Program(inputs, {k: QType(**v) for k, v in doc["tensors"].items()}, dict(doc["dequantized"]), consts,
                   layers, list(doc["outputs"]), int(doc["opsets"].get("", 13)), dict(doc["float_types"]),
                   dict(doc["opsets"]), int(doc["ir_version"]))
