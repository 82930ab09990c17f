"""Proof on real data (the UCI digits): L2 from scratch, then L1, then sparse fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import cnn
from train_helpers import needs_training, values

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "digits_cnn.onnx"
SPARSE = dict(sparsity_target=0.82, sparsity_start_iter=0, sparsity_step_iter=20, sparsity_start_factor=0.5,
              sparsity_step_factor=0.05, sparsity_low_ratio=1.0, threshold_value_max=10.0,
              threshold_value_maxratio=1.0)


@needs_training
@pytest.mark.slow
def test_digits_l2_l1_sparse(digits):
    import onnxsq

    train, test = digits
    model = onnx.load(str(SAMPLE)) if SAMPLE.exists() else cnn((16, 32, 32))
    common = dict(batch_size=32, lr_policy="cosine", seed=0, display=0)
    l2, r2 = onnxsq.train(model, train, val=test, stage="l2", epochs=10, lr=0.05, weight_decay=1e-4, **common)
    dense = r2.summary["val_top1"]
    assert dense >= 0.97
    l1, r1 = onnxsq.train(l2, train, val=test, stage="l1", epochs=8, lr=0.02, l1=2e-4, **common)
    sparse, rs = onnxsq.train(l1, train, val=test, stage="sparse", epochs=10, lr=0.02, **common, **SPARSE)
    assert rs.summary["conv_sparsity"] >= 0.80
    assert rs.summary["val_top1"] >= dense - 0.01
    # the exported model agrees with an independent evaluation, and every conv weight zero stays zero
    assert onnxsq.evaluate(sparse, test).summary["top1"] == rs.summary["val_top1"]
    convs = [n.input[1] for n in sparse.graph.node if n.op_type == "Conv"]
    w = values(sparse)
    assert sum((w[c] == 0).sum() for c in convs) / sum(w[c].size for c in convs) == pytest.approx(
        rs.summary["conv_sparsity"])
    # a further sparse fine-tune keeps exactly those zeros (weight_connect_mode default in this stage)
    again, _ = onnxsq.train(sparse, train, stage="sparse", iters=30, lr=0.01, weight_decay=1e-4, **common)
    w2 = values(again)
    for c in convs:
        assert np.all(w2[c][w[c] == 0] == 0)
