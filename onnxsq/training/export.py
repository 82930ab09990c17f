"""Export: the trained values written back into the user's own inference graph.

Training happens on a rewritten copy (BN in training mode, ConvTranspose/Resize replaced, batch axis
made symbolic), but every trained value keeps its initializer name. So the exported model is the
input model itself — same inputs, outputs, IR version, opsets, ops and BatchNormalization in
inference mode — with new initializer values (BN's running mean/var included). The dtype of each
initializer is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper


def export_trained(original: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``original`` whose initializers named in ``values`` hold the trained values."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    for i, init in enumerate(model.graph.initializer):
        if init.name in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            arr = np.asarray(values[init.name]).astype(dtype).reshape(tuple(init.dims))
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    return model
