"""The float model with the pass's scale alignment carried by its weights: what label-free fine-tuning trains.

:mod:`.align` scales each domain's tensors by a factor ``a`` its producing layers' weights and biases carry
(its reading layers' weights divide by it), and hands each aligned graph output back by a product with
``1 / a``: the network computes the same function, up to one float rounding per weight. Written as a float
model (the product after the output's producer, where a later fold takes it into that layer), the quantize
pass run on it *without* alignment chooses its shifts on the aligned tensors -- the aligned pass's
quantization in a form a parameters file can hold (shifts alone), which fine-tuning's student needs
(:mod:`onnxsq.training.finetune`; before, it started from the unaligned pass and lost alignment's gain).

The pass folds a product after a layer into that layer (``fold_batchnorm``'s affine fold), so a graph
output's factor goes back into the layer that writes it: the pass run on this model quantizes every aligned
domain aligned but the graph outputs' (measured on the zoo: within 0.3 dB of the aligned pass on 12 of 15
models that align, 0.6-0.8 dB below it on three whose output domains align). None where nothing aligns
(or the config turns alignment off): the model as it is is then the one to train.
"""

from __future__ import annotations

from typing import Any

import onnx

from ...calibration.collect import runnable
from ...graph import export_like
from .align import align_scales, unscale_outputs


def aligned_float_model(model: Any, samples: list[dict], cfg: Any) -> onnx.ModelProto | None:
    """``model`` folded and equalized as the pass does it, with the scale alignment calibrated on ``samples``
    carried by its weights (graph outputs handed back by a product with ``1 / a``); None where none aligns."""
    from .ptq import _calibrate, prepare

    ctx, graph, meta, *_, clock = prepare(model, cfg, None)
    float_model, float_weights = runnable(graph, meta)
    _calibrate(ctx, graph, samples, float_model, float_weights, None, clock)
    if not align_scales(ctx, graph, float_model, float_weights):
        return None
    del float_model, float_weights
    unscale_outputs(graph, ctx)
    return export_like(graph, meta)
