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


@pytest.mark.parametrize("prefetch", [2, 0])
def test_errors_in_the_prefetch_thread_or_the_callers_reach_the_caller(prefetch):
    data = _Broken(np.zeros((10, 1, 1, 1), np.float32), np.arange(10))
    with pytest.raises(DataError, match="bad sample 7"):
        list(Loader(data, 2, prefetch=prefetch).epoch())


def test_in_memory_data_is_batched_in_the_callers_thread_with_the_same_batches():
    data = ArrayDataset(np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32),
                        np.arange(10))
    assert Loader(data, 3).prefetch == 0 and Loader(data, 3, prefetch=2).prefetch == 2

    def batches(prefetch):
        loader = Loader(data, 3, shuffle=True, seed=2, drop_last=True, prefetch=prefetch)
        return list(itertools.islice(loader.stream(1, 2), 5))

    threaded, direct = batches(2), batches(0)
    assert [(e, b) for e, b, _, _ in direct] == [(1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]
    for (e1, b1, x1, y1), (e2, b2, x2, y2) in zip(threaded, direct, strict=True):
        assert (e1, b1) == (e2, b2)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
