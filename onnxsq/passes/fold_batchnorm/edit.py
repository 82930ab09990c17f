"""Graph edits of the folds (:mod:`.rules`, :mod:`.affine`, :mod:`onnxsq.passes.equalize`): lazily
inferred tensor types, writing a layer's constant inputs without touching tensors other nodes share, and
scaling a layer's output channels into its weights and bias (a check, then a rewrite that cannot fail)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...graph import (
    UniqueNames,
    const_value,
    is_graph_output,
    new_constant,
    node_label,
    onnx_dtype_to_np,
)
from . import bn_math as bm

log = logging.getLogger(__name__)


class TensorTypes:
    """(rank, dtype) of tensors, from the graph or, computed once on demand, onnx shape inference."""

    def __init__(self, model: onnx.ModelProto | None) -> None:
        self.model = model  # None: no shape inference, unknown stays unknown
        self._types: dict[str, tuple[int | None, int]] | None = None

    def info(self, tensor: gs.Tensor) -> tuple[int | None, np.dtype | None]:
        rank = len(tensor.shape) if tensor.shape is not None else None
        dtype = _np_dtype(tensor.dtype)
        if (rank is None or dtype is None) and tensor.name:
            inferred_rank, elem = self._inferred().get(tensor.name, (None, 0))
            rank = inferred_rank if rank is None else rank
            dtype = dtype if dtype is not None or not elem else onnx_dtype_to_np(elem)
        return rank, dtype

    def _inferred(self) -> dict[str, tuple[int | None, int]]:
        if self._types is None:
            self._types = {}
            if self.model is None:
                return self._types
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception as exc:  # noqa: BLE001 - shape inference is a best-effort hint here
                log.debug("shape inference failed: %s", exc)
                return self._types
            g = inferred.graph
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                tt = vi.type.tensor_type
                self._types[vi.name] = (len(tt.shape.dim) if tt.HasField("shape") else None, tt.elem_type)
        return self._types


def _np_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        try:
            return onnx_dtype_to_np(int(dtype))
        except Exception:  # noqa: BLE001 - an unknown dtype is simply unknown (None)
            return None


def set_const_input(graph: gs.Graph, node: gs.Node, idx: int, values: np.ndarray, base: str,
                    names: UniqueNames | None = None) -> None:
    """Give ``node`` input ``idx`` the value ``values``: in place when only ``node`` reads that
    initializer, else as a fresh constant (shared weights are cloned, Constant nodes replaced)."""
    cur = node.inputs[idx] if idx < len(node.inputs) else None
    if (isinstance(cur, gs.Constant) and cur.name and len(cur.outputs) == 1
            and not is_graph_output(graph, cur)):
        cur.values = values
        return
    new = new_constant(graph, f"{base}_folded" if cur is not None and cur.name else base, values, names)
    if cur is None:
        while len(node.inputs) < idx:  # unreachable for the layers here; keeps input positions right
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(new)
    else:
        node.inputs[idx] = new


def layer_channel_error(layer: gs.Node, channels: int) -> str | None:
    """Why ``layer`` cannot absorb a per-output-channel affine map of ``channels`` values (None: it can).

    The check half of :func:`rewrite_layer`: a constant weight of the right shape and a constant bias/C."""
    w = const_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if w is None:
        return f"the weight of {layer.op} {node_label(layer)} is not constant"
    if len(layer.inputs) > 2 and layer.inputs[2].name != "" and const_value(layer.inputs[2]) is None:
        return f"the bias/C of {layer.op} {node_label(layer)} is not constant"
    label = node_label(layer)
    if layer.op == "Conv":
        n = w.shape[0]
    elif layer.op == "ConvTranspose":
        n = bm.convtranspose_out_channels(w, int(layer.attrs.get("group", 1)))
    elif w.ndim != 2:
        return f"{label} has a rank-{w.ndim} weight, not a 2-D matrix"
    else:
        n = w.shape[0] if layer.op == "Gemm" and int(layer.attrs.get("transB", 0)) == 1 else w.shape[1]
    if n != channels:
        what = "channels" if layer.op in ("Conv", "ConvTranspose") else "features"
        return f"{label} has {n} output {what}, the affine map {channels}"
    return None


def rewrite_layer(graph: gs.Graph, names: UniqueNames, layer: gs.Node, scale: np.ndarray,
                  shift: np.ndarray) -> None:
    """Make ``layer`` compute ``scale * layer(x) + shift`` (per output channel) through its weight and
    bias; :func:`layer_channel_error` must have passed. A MatMul has no bias: only its weight is scaled,
    and the caller places ``shift``. Weights other nodes share are cloned."""
    w = const_value(layer.inputs[1])
    has_bias = len(layer.inputs) > 2 and layer.inputs[2].name != ""
    bias = const_value(layer.inputs[2]) if has_bias else None
    if layer.op == "Conv":
        new_w, new_b = bm.scale_conv_weight(w, scale, w.dtype), bm.fold_bias(bias, scale, shift)
    elif layer.op == "ConvTranspose":
        group = int(layer.attrs.get("group", 1))
        new_w, new_b = bm.scale_convtranspose_weight(w, scale, group, w.dtype), bm.fold_bias(bias, scale, shift)
    elif layer.op == "Gemm":
        trans = int(layer.attrs.get("transB", 0)) == 1
        new_w = bm.scale_matrix_columns(w, scale, trans, w.dtype)
        new_b = bm.fold_gemm_c(bias, float(layer.attrs.get("beta", 1.0)), scale, shift)
        layer.attrs["beta"] = 1.0
    else:  # MatMul
        new_w, new_b = bm.scale_matrix_columns(w, scale, False, w.dtype), None
    set_const_input(graph, layer, 1, bm.cast_like(new_w, w), f"{layer.inputs[1].name}", names)
    if new_b is not None:
        base = layer.inputs[2].name if has_bias else f"{node_label(layer)}_bias"
        set_const_input(graph, layer, 2, bm.cast_like(new_b, bias if bias is not None else w), base, names)
