"""The UCI digits for the training tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits():
    """(train, test) ArrayDatasets of the UCI digits, scaled to [0, 1], a fixed stratified split."""
    pytest.importorskip("sklearn", reason="scikit-learn (test extra) provides the digits data")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from onnxsq.data.classification import ArrayDataset

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=0,
                                          stratify=d.target)
    return ArrayDataset(xtr, ytr, where="digits-train"), ArrayDataset(xte, yte, where="digits-test")
