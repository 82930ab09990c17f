"""Read and write a ModelProto file piece by piece, never holding one serialized copy of the model.

Why: protobuf serializes a message into one growing buffer and then copies it into a Python
``bytes``, so ``SerializeToString`` of a 25 MB int8 model held ~63 MB at its peak (the ResNet-50-sized
quantize benchmark's largest allocation); ``onnx.load`` holds the file's bytes and the parsed model
together (2 x 98 MB for the float ResNet-50). Here only the graph without its initializers and one
initializer at a time are (de)serialized.

The bytes are protobuf's wire format, which allows a message's fields in any order and a
length-delimited submessage to be written as its encoded fields behind ``tag, length``: the file is
the model's header fields, then field 7 (``graph``) holding the graph's other fields followed by
field 5 (``initializer``) entries, in their order. Parsing it gives a message equal to ``model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import onnx

MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
LENGTH_DELIMITED = 2
FIXED_SIZE = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit)
CHUNK = 4 << 20  # other fields are parsed in chunks of about this many bytes


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(field: int) -> bytes:
    return varint((field << 3) | LENGTH_DELIMITED)


def write_model(model: onnx.ModelProto, f: BinaryIO) -> int:
    """Serialize ``model`` into the open binary file ``f``; returns the bytes written.

    Memory: the largest single initializer plus the graph without initializers, not the model.
    """
    head = onnx.ModelProto()
    copy_fields(model, head, skip="graph")
    written = f.write(head.SerializeToString())
    if not model.HasField("graph"):
        return written
    body = onnx.GraphProto()
    copy_fields(model.graph, body, skip="initializer")
    body_bytes = body.SerializeToString()
    del body
    inits = model.graph.initializer
    sizes = [t.ByteSize() for t in inits]
    tag = _tag(GRAPH_INITIALIZER)
    length = len(body_bytes) + sum(len(tag) + len(varint(s)) + s for s in sizes)
    written += f.write(_tag(MODEL_GRAPH) + varint(length))
    written += f.write(body_bytes)
    for t, s in zip(inits, sizes):
        written += f.write(tag + varint(s))
        written += f.write(t.SerializeToString())
    return written


def read_model(f: BinaryIO, size: int) -> onnx.ModelProto:
    """Parse the ``size`` bytes of a model file from ``f``: each initializer from its own bytes, the
    other fields in chunks. Raises ``ValueError`` (or protobuf's ``DecodeError``) on malformed input."""
    model = onnx.ModelProto()

    def initializer(n: int) -> None:
        model.graph.initializer.add().ParseFromString(_exact(f, n))

    def graph(n: int) -> None:
        _read_fields(f, n, model.graph, {GRAPH_INITIALIZER: initializer})

    _read_fields(f, size, model, {MODEL_GRAPH: graph})
    return model


def _read_fields(f: BinaryIO, size: int, msg, special: dict[int, Callable[[int], None]]) -> None:
    """Merge ``size`` bytes of ``msg``'s encoded fields into it; length-delimited fields named in
    ``special`` go to their handler (called with the payload length, ``f`` at the payload)."""
    pending = bytearray()
    done = 0
    while done < size:
        key, kb = _read_varint(f)
        field, wire = key >> 3, key & 7
        done += len(kb)
        if wire == LENGTH_DELIMITED:
            n, nb = _read_varint(f)
            done += len(nb) + n
            if done > size:  # before reading: a corrupt length must not become a huge allocation
                raise ValueError(f"field {field} runs past the end of its message (truncated or corrupt file?)")
            if field in special:
                msg.MergeFromString(bytes(pending))
                pending.clear()
                special[field](n)
            else:
                pending += kb + nb + _exact(f, n)
        elif wire == 0:
            _, vb = _read_varint(f)
            done += len(vb)
            pending += kb + vb
        elif wire in FIXED_SIZE:
            done += FIXED_SIZE[wire]
            pending += kb + _exact(f, FIXED_SIZE[wire])
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        if len(pending) >= CHUNK:
            msg.MergeFromString(bytes(pending))
            pending.clear()
    if done != size:
        raise ValueError("a field runs past the end of its message (truncated file?)")
    msg.MergeFromString(bytes(pending))


def _read_varint(f: BinaryIO) -> tuple[int, bytes]:
    raw = bytearray()
    while True:
        b = f.read(1)
        if not b:
            raise ValueError("unexpected end of file (truncated?)")
        raw += b
        if b[0] < 0x80:
            break
        if len(raw) >= 10:
            raise ValueError("malformed varint")
    return sum((c & 0x7F) << (7 * i) for i, c in enumerate(raw)), bytes(raw)


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("unexpected end of file (truncated?)")
    return data


def copy_fields(src, dst, *, skip: str) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; ``label`` is deprecated there
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED
