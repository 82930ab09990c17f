"""The image preprocessing a model was calibrated with, kept in the model itself.

``onnxsq quantize`` on images (and ``onnxsq pipeline`` with a ``[data] preprocess`` table) writes it
into the model's ``metadata_props`` under :data:`KEY`, as JSON: ``{"mean": [R, G, B], "std": [R, G, B],
"channel_order": "rgb", "layout": "nchw", "by": "onnxsq quantize"}`` (pixel units 0-255, as the
options take them), and ``"size": [H, W]`` where the calibration resized its images to a size the model
does not fix itself (a dynamic H or W: a text recognizer calibrated at 48×320 runs at no other height).
``onnxsq eval`` and ``simulate`` then use it where their own options are not given, and say when a
given option differs from what is stored, so the numbers of a quantized model are not silently those
of another preprocessing. The metadata travels with the model through every pass (``export_like``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import onnx

from .images import Preprocess

log = logging.getLogger(__name__)

KEY = "onnxsq.preprocess"
FIELDS = ("mean", "std", "channel_order", "layout")


def store(model: onnx.ModelProto, pre: Preprocess, *, by: str) -> None:
    """Write ``pre``'s mean, std, channel order and layout into ``model.metadata_props`` (in place:
    call it on a model of your own, e.g. a pass's output, never on an input)."""
    value = {"mean": [float(v) for v in pre.mean], "std": [float(v) for v in pre.std],
             "channel_order": pre.channel_order, "layout": pre.layout, "by": by}
    if pre.size is not None:
        value["size"] = [int(v) for v in pre.size]
    for prop in model.metadata_props:
        if prop.key == KEY:
            prop.value = json.dumps(value)
            return
    model.metadata_props.add(key=KEY, value=json.dumps(value))


def stored(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The stored preprocessing (mean and std as tuples), or None where there is none or it is unreadable."""
    text = next((p.value for p in model.metadata_props if p.key == KEY), None)
    if text is None:
        return None
    try:
        data = json.loads(text)
        out = {"mean": tuple(float(v) for v in data["mean"]), "std": tuple(float(v) for v in data["std"]),
               "channel_order": str(data["channel_order"]), "layout": str(data["layout"]),
               "by": str(data.get("by", "onnxsq"))}
        size = data.get("size")
        out["size"] = None if size is None else (int(size[0]), int(size[1]))
        if out["size"] is not None and min(out["size"]) <= 0:
            raise ValueError(f"size {out['size']}")
        Preprocess(mean=out["mean"], std=out["std"], channel_order=out["channel_order"], layout=out["layout"])
    except Exception as exc:  # noqa: BLE001 - JSON, key, type and validation errors alike: not ours to trust
        log.warning("the model's %s metadata is unreadable (%s); using the command's options", KEY, exc)
        return None
    return out


def stored_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The (H, W) the model was calibrated at where it does not fix its own size, else None."""
    meta = stored(model)
    return None if meta is None else meta["size"]


def _show(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, (tuple, list)):
        return f"{flag} {' '.join(f'{v:g}' for v in value)}"
    return f"{flag} {value}"


def resolve(model: onnx.ModelProto, options: Mapping[str, Any], given: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The preprocessing options to use: each of :data:`FIELDS` from ``options`` where it is in ``given``
    (set on the command line), else from the model's stored preprocessing, else ``options``' default.

    Returns (options, notes): a note for each given option that differs from the stored value (a
    warning for the caller to show), and one saying what was taken from the model.
    """
    meta = stored(model)
    out = dict(options)
    if meta is None:
        return out, []
    notes, taken = [], []
    for name in FIELDS:
        mine, theirs = options.get(name), meta[name]
        same = tuple(mine) == tuple(theirs) if isinstance(theirs, tuple) and mine is not None else mine == theirs
        if name in given:
            if not same:
                notes.append(f"{_show(name, mine)} overrides the model's stored preprocessing "
                             f"({_show(name, theirs)}, written by {meta['by']})")
        else:
            out[name] = theirs
            if not same:
                taken.append(_show(name, theirs))
    if taken:
        log.info("preprocessing from the model's metadata (written by %s): %s", meta["by"], ", ".join(taken))
    return out, notes
