"""fold-batchnorm: BatchNormalization and exporters' affine ops folded into the layers around them.

- :mod:`.fold` — the pass (:func:`fold_batchnorm`, on a graph :func:`fold_batchnorm_graph`) and the
  summary quantize and QAT fold with (:func:`summarize_for_quantize`);
- :mod:`.rules` — the three BN rules, each a check (a match or the reason) and a rewrite;
- :mod:`.affine` — constant Mul/Add/Sub/Div chains after a layer into its weights and bias;
- :mod:`.relu_scale` / :mod:`.scale_back` — positive per-channel scales moved through a ReLU (or pool)
  into the layers after it / before it;
- :mod:`.bn_math` — the numbers (numpy only); :mod:`.edit` — the graph edits the folds share.
"""

from .fold import PASS_NAME, fold_batchnorm, fold_batchnorm_graph, summarize_for_quantize
from .rules import RULES

__all__ = ["PASS_NAME", "RULES", "fold_batchnorm", "fold_batchnorm_graph", "summarize_for_quantize"]
