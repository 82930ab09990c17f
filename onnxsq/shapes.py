"""Input shapes: the full static shape every data input of a model is run with.

Every command that runs a model on inputs it makes up (the self-check of ``optimize``, ``verify``
without ``--data``) or sizes images for it (``quantize``, ``eval``) needs one static shape per input.
A shape the user gives (``--input-shape NAME:1x3x224x224``) is checked against the model and wins;
the rest is filled by :func:`resolve_input_shapes` with sizes real models accept (see its rules).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence

import onnx

from .errors import InvalidOptionError
from .graph import data_inputs

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
GivenShapes = Mapping[str | None, Sequence[int]]  # a None key: the only data input

SPELLING = "NAME:1x3x224x224"
SHAPE_HINT = f"pass --input-shape {SPELLING} or --no-verify"
# (H, W) of a rank-4 input's dynamic spatial dims, by attempt: square images in multiples of 32,
# then text lines (PP-OCR recognizers take H 48, CRNNs H 32; their Reshapes fix H)
IMAGE_SIZES = ((224, 224), (320, 320), (48, 320), (32, 320))
OTHER_SIZES = (32, 64, 16, 128)  # any other dynamic dim (sequence lengths, ...), by attempt
ATTEMPTS = len(IMAGE_SIZES)
IMAGE_CHANNELS = 3
NHWC_CHANNELS = (1, 3, 4)


def parse_input_shape(spec: str) -> tuple[str | None, tuple[int, ...]]:
    """``NAME:1x3x224x224`` → ``("NAME", (1, 3, 224, 224))``; a bare ``1x3x224x224`` → ``(None, ...)``
    (for a one-input model). The name may contain ``:`` (``input:0:1x3``): the last one splits. The dims
    may also be spelled with commas, bracketed or not (``x:1,3,224,224``, ``x:[1,3,224,224]``), as other
    tools write them; a spec names one input (the option repeats), so a comma is never ambiguous."""
    name, colon, dims_text = spec.rpartition(":")
    name = name.strip()
    if colon and not name:
        raise InvalidOptionError(f"--input-shape {spec!r}: no input name before ':' (expected {SPELLING})")
    dims_text = dims_text.strip()
    if dims_text.startswith("[") and dims_text.endswith("]"):
        dims_text = dims_text[1:-1]
    sep = "," if "," in dims_text and "x" not in dims_text else "x"
    parts = [p.strip() for p in dims_text.strip().split(sep)]
    if not dims_text.strip() or not all(parts):
        raise InvalidOptionError(f"--input-shape {spec!r}: no dims after the name (expected {SPELLING})")
    dims = []
    for p in parts:
        if not p.isdigit():
            raise InvalidOptionError(f"--input-shape {spec!r}: {p!r} is not a dim (expected positive integers "
                                     f"joined by 'x', as in {SPELLING})")
        if int(p) <= 0:
            raise InvalidOptionError(f"--input-shape {spec!r}: dims must be positive, not {p}")
        dims.append(int(p))
    return (name if colon else None), tuple(dims)


def format_shape(dims: Sequence[int | str]) -> str:
    """``(1, 3, 224, 224)`` → ``1x3x224x224``."""
    return "x".join(str(d) for d in dims)


def format_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    """``{"x": (1, 3)}`` → ``x:1x3`` (comma-separated for several inputs), the ``--input-shape`` spelling."""
    return ", ".join(f"{name}:{format_shape(dims)}" for name, dims in shapes.items())


def _model_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Per axis: the static size, the dim_param (a symbol), or None (unknown)."""
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or None)
    return out


def _named(model: onnx.ModelProto, given: GivenShapes | None) -> dict[str, tuple[int, ...]]:
    """``given`` keyed by input name (a None key: the only data input), checked against the model."""
    inputs = {vi.name: vi for vi in data_inputs(model)}
    have = ", ".join(inputs) or "none"
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in (given or {}).items():
        if name is None:
            if len(inputs) != 1:
                raise InvalidOptionError(f"--input-shape {format_shape(dims)}: the model has {len(inputs)} inputs "
                                         f"({have}); name the one it is for, as in {SPELLING}")
            name = next(iter(inputs))
        if name not in inputs:
            raise InvalidOptionError(f"--input-shape {name}: the model has no input {name!r} (its inputs: {have})")
        if name in out:
            raise InvalidOptionError(f"--input-shape {name}: given twice")
        dims = tuple(int(d) for d in dims)
        want = _model_dims(inputs[name])
        if len(dims) != len(want):
            raise InvalidOptionError(f"--input-shape {name}:{format_shape(dims)}: the model input has rank "
                                     f"{len(want)} ({format_shape(['?' if w is None else w for w in want])})")
        for axis, (d, w) in enumerate(zip(dims, want)):
            if d <= 0 or (isinstance(w, int) and d != w):
                raise InvalidOptionError(f"--input-shape {name}:{format_shape(dims)}: dim {axis} is {d}, the "
                                         f"model input has {format_shape(['?' if v is None else v for v in want])}")
        out[name] = dims
    return out


def _is_nhwc(dims: Sequence[int | str | None]) -> bool:
    return (len(dims) == 4 and dims[3] in NHWC_CHANNELS
            and not isinstance(dims[1], int) and not isinstance(dims[2], int))


def _fill(dims: Sequence[int | str | None], axis: int, attempt: int, batch: int) -> int:
    """The size of one dynamic axis by position (see :func:`resolve_input_shapes`)."""
    if axis == 0:
        return batch
    if len(dims) == 4:
        spatial, channel = ((1, 2), 3) if _is_nhwc(dims) else ((2, 3), 1)
        if axis in spatial:
            return IMAGE_SIZES[attempt][spatial.index(axis)]
        if axis == channel:
            return IMAGE_CHANNELS
    return OTHER_SIZES[attempt]


def resolve_input_shapes(model: onnx.ModelProto, given: GivenShapes | None = None, attempt: int = 0, *,
                         batch: int = 1) -> Shapes:
    """A full static shape for every data input (initializers listed as inputs, IR < 4, are not).

    Rules, per input and axis, in this order:

    1. a shape in ``given`` (input name → dims; a ``None`` key means the only input) is taken as it is,
       after checking it against the model: the name exists (else the error names the inputs that
       do), the rank matches, every static dim matches;
    2. a static dim stays;
    3. a symbolic dim (``dim_param``) already resolved — in a given shape or an earlier input — gets
       that value, so inputs that share a symbol (``batch``, ``seq``) agree, as the model requires;
    4. axis 0 is the batch: ``batch`` (1);
    5. a rank-4 input is an image: NCHW (spatial axes 2, 3), or NHWC when axis 3 is static 1/3/4 and
       axes 1, 2 are dynamic; dynamic (H, W) become :data:`IMAGE_SIZES` ``[attempt]``: 224×224, then
       320×320 — sizes vision models take (multiples of 32 survive the usual 5 stride-2 stages, and
       detection heads with fixed anchors or fixed-size Add/Reshape constants are exported at such
       sizes) — then the text-line sizes 48×320 and 32×320 (OCR recognizers whose Reshapes fix the
       height); a dynamic channel axis becomes 3;
    6. any other dynamic dim (sequence lengths, counts) becomes :data:`OTHER_SIZES` ``[attempt]``.

    Small sizes such as 8 look cheaper but real models refuse them (3 stride-2 convs and a pooling of
    8×8 leave nothing; an Add with a constant made for 224 cannot broadcast 2 by 8). ``attempt`` > 0
    are the retries a caller makes when the previous one does not run. Pure: the model is only read.
    """
    if not 0 <= attempt < ATTEMPTS:
        raise ValueError(f"attempt must be in 0..{ATTEMPTS - 1}, not {attempt}")
    named = _named(model, given)
    symbols: dict[str, int] = {}
    for vi in data_inputs(model):
        if vi.name in named:
            for sym, d in zip(_model_dims(vi), named[vi.name]):
                if isinstance(sym, str):
                    symbols.setdefault(sym, d)
    out: Shapes = {}
    for vi in data_inputs(model):
        if vi.name in named:
            out[vi.name] = named[vi.name]
            continue
        dims = _model_dims(vi)
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                shape.append(d)
                continue
            size = symbols.get(d) if d is not None else None
            if size is None:
                size = _fill(dims, axis, attempt, batch)
                if d is not None:
                    symbols[d] = size
            shape.append(size)
        out[vi.name] = tuple(shape)
    return out


def shape_template(dims: Sequence[int | str | None]) -> str:
    """An input's dims as a ``--input-shape`` to fill in: static sizes stay, a dynamic batch is 1,
    the dynamic axes of an image are ``C``/``H``/``W``, other dynamic dims their symbol when it is a
    short identifier (exporters write ``p2o.DynamicDimension.1``, ``unk__236``), else ``?``:
    ``[p2o.DynamicDimension.0, 3, ?, p2o.DynamicDimension.1]`` → ``1x3xHxW``."""
    roles: dict[int, str] = {}
    if len(dims) == 4:
        spatial, channel = ((1, 2), 3) if _is_nhwc(dims) else ((2, 3), 1)
        roles = {spatial[0]: "H", spatial[1]: "W", channel: "C"}
    out: list[int | str] = []
    for axis, d in enumerate(dims):
        if isinstance(d, int):
            out.append(d)
        elif axis == 0:
            out.append(1)
        elif axis in roles:
            out.append(roles[axis])
        else:
            out.append(d if d and d.isidentifier() and len(d) <= 12 and "__" not in d else "?")
    return format_shape(out)


def shape_hint(model: onnx.ModelProto, alternative: str | None = "--no-verify") -> str:
    """The one-line fix for a model that does not run on the shapes tried: ``pass --input-shape
    x:1x3xHxW (the sizes it takes) or --no-verify``, naming the inputs with dynamic dims
    (:func:`shape_template`). ``alternative``: the other way out the command has (None: none).
    Empty when there is nothing to suggest."""
    specs = []
    for vi in data_inputs(model):
        dims = _model_dims(vi)
        if all(isinstance(d, int) for d in dims):
            continue
        specs.append(f"--input-shape {shlex.quote(f'{vi.name}:{shape_template(dims)}')}")
    if not specs:
        return f"pass {alternative}" if alternative else ""
    what = " ".join(specs) + " (the sizes it takes)"
    return f"pass {what}" + (f" or {alternative}" if alternative else "")


def image_size(model: onnx.ModelProto, given: GivenShapes | None = None, layout: str = "nchw"
               ) -> tuple[int, int] | None:
    """(H, W) to resize images to for a one-input model whose rank-4 input leaves H or W dynamic:
    from ``given`` (checked as in :func:`resolve_input_shapes`), else 224 (logged at INFO). None when
    the model fixes both (images then take its static size) or has no single rank-4 input."""
    inputs = data_inputs(model)
    dims = _model_dims(inputs[0]) if len(inputs) == 1 else []
    if len(dims) != 4:
        return None
    hw = (2, 3) if layout == "nchw" else (1, 2)
    if all(isinstance(dims[a], int) for a in hw):
        resolve_input_shapes(model, given)  # a given shape is still checked against the model
        return None
    shape = resolve_input_shapes(model, given)[inputs[0].name]
    if given:
        return shape[hw[0]], shape[hw[1]]
    size = tuple(d if isinstance(d, int) else default for d, default in zip((dims[hw[0]], dims[hw[1]]), IMAGE_SIZES[0]))
    log.info("input %r has a dynamic size (%s): images are resized to %dx%d (--input-shape or --size sets it)",
             inputs[0].name, format_shape(["?" if d is None else d for d in dims]), *size)
    return size[0], size[1]
