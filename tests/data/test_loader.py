"""Loader: seeded per-epoch shuffling, resumable positions, background prefetch, errors surface."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxsq.data.classification import ArrayDataset
from onnxsq.data.loader import Loader
from onnxsq.errors import DataError


def _data(n=10):
    return ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n))


def test_epochs_shuffle_differently_and_deterministically():
    a = Loader(_data(), 4, shuffle=True, seed=1, drop_last=True)
    assert a.batches_per_epoch() == 2
    got = [y.tolist() for _, _, _, y in itertools.islice(a.stream(), 4)]
    again = [y.tolist() for _, _, _, y in itertools.islice(Loader(_data(), 4, shuffle=True, seed=1,
                                                                 drop_last=True).stream(), 4)]
    assert got == again and got[:2] != got[2:]
    assert len(set(sum(got[:2], []))) == 8  # no repeats within an epoch
    # resuming at (epoch 1, batch 1) yields what the uninterrupted stream yielded 4th
    assert next(iter(a.stream(1, 1)))[3].tolist() == got[3]


def test_eval_epoch_covers_everything_once_in_order():
    ys = [y for _, y in Loader(_data(10), 4).epoch()]
    assert [len(y) for y in ys] == [4, 4, 2] and np.concatenate(ys).tolist() == list(range(10))


class _Broken(ArrayDataset):
    def batch(self, indices, rng=None):
        if 7 in indices:
            raise DataError("bad sample 7")
        return super().batch(indices, rng)


def test_errors_in_the_prefetch_thread_reach_the_caller():
    data = _Broken(np.zeros((10, 1, 1, 1), np.float32), np.arange(10))
    with pytest.raises(DataError, match="bad sample 7"):
        list(Loader(data, 2).epoch())
