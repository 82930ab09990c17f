"""Calibration in shards: merged shards equal one pass bit for bit, and quantize from them gives the same model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from builders import conv_classifier

from onnxsq.calibration.dyadic import DyadicFold
from onnxsq.calibration.stats import ChannelMean, TensorStats
from onnxsq.calibration.stats_file import merge_stats, read_stats, write_stats
from onnxsq.calibration.units import parse_shard
from onnxsq.errors import DataError, InvalidOptionError
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.shards import calibrate


def _leaves(seed: int, n: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(rng.standard_normal(n) * 10 ** rng.uniform(-8, 8, n))  # wide magnitudes: rounding shows


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 33])
def test_dyadic_fold_splits_anywhere_to_the_same_bits(n):
    values = _leaves(n, n)
    one = DyadicFold(lambda a, b: a + b)
    for i, v in enumerate(values):
        one.push(i, v)
    assert one.value() == pytest.approx(sum(values), rel=1e-9)
    for cuts in ([n // 2], [1, n - 1], [n // 3, 2 * n // 3]):
        cuts = sorted({c for c in cuts if 0 < c < n})
        parts, lo = [], 0
        for hi in [*cuts, n]:
            f = DyadicFold(lambda a, b: a + b)
            for i in range(lo, hi):
                f.push(i, values[i])
            parts.append(f)
            lo = hi
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merged(p)
        assert merged.value() == one.value()  # exact: the same operations on the same operands
        assert merged.to_list() == one.to_list()


def _batches(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1 + 3 * i, (2, 3, 5)) * (rng.random((2, 3, 5)) > 0.2)).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("histogram", [True, False])
def test_positioned_tensor_stats_and_means_merge_bit_for_bit(histogram):
    xs = _batches(7, 11)
    def run(lo, hi):
        s, m = TensorStats(histogram=histogram), ChannelMean(1, 3)
        for i in range(lo, hi):
            s.update(xs[i], i)
            m.update(xs[i], i)
        return s, m
    one_s, one_m = run(0, 11)
    (a, am), (b, bm), (c, cm) = run(0, 3), run(3, 4), run(4, 11)
    s = a.merge(TensorStats.from_dict(json.loads(json.dumps(b.to_dict())))).merge(c)
    m = am.merge(ChannelMean.from_dict(json.loads(json.dumps(bm.to_dict())))).merge(cm)
    assert s.to_dict() == one_s.to_dict()
    assert (s.ema_min, s.ema_max) == (one_s.ema_min, one_s.ema_max)
    np.testing.assert_array_equal(m.mean, one_m.mean)
    # the tree-ordered moving average is still the original's (up to rounding)
    r = float(xs[0].max())
    for x in xs[1:]:
        r = 0.99 * r + 0.01 * float(x.max())
    assert one_s.ema_max == pytest.approx(r, rel=1e-12)


@pytest.fixture
def net_and_data(tmp_path):
    model = conv_classifier((4, 8), in_ch=3, size=8, seed=2, bn="random")
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        np.save(data / f"{i:02d}.npy", (rng.standard_normal((3, 8, 8)) * (1 + i)).astype(np.float32))
    return path, data


@pytest.mark.parametrize("method,batch", [("auto", 1), ("ema", 2), ("minmax", 3)])
def test_shards_merged_equal_one_pass_and_quantize_identically(net_and_data, tmp_path, method, batch):
    path, data = net_and_data
    cfg = QuantizeConfig(method=method, batch_size=batch)
    one = calibrate(path, str(data), config=cfg)
    files = []
    for i in (2, 0, 3, 1):  # any order
        f = tmp_path / f"s{i}.stats"
        write_stats(calibrate(path, str(data), config=cfg, shard=(i, 4)), f)
        files.append(f)
    merged = merge_stats(files)
    assert merged.samples == one.samples == 11 and not merged.missing()
    assert {n: s.to_dict() for n, s in merged.tensors.items()} == {n: s.to_dict() for n, s in one.tensors.items()}
    assert merged.means and all(np.array_equal(merged.means[n].mean, one.means[n].mean) for n in one.means)
    q_calib, _ = quantize(path, str(data), config=cfg)
    q_stats, rep = quantize(path, str(data), config=cfg, stats=files)
    assert q_stats.SerializeToString() == q_calib.SerializeToString()
    assert rep.summary["stats_parts"] == 4


def test_jobs_give_the_one_process_model(net_and_data):
    path, data = net_and_data
    cfg = QuantizeConfig(batch_size=2)
    q1, _ = quantize(path, str(data), config=cfg)
    q2, rep = quantize(path, str(data), config=cfg, jobs=2)
    assert q2.SerializeToString() == q1.SerializeToString()
    assert rep.summary["stats_parts"] == 2


def test_bad_statistics_are_one_line_errors(net_and_data, tmp_path):
    path, data = net_and_data
    cfg = QuantizeConfig()
    parts = [calibrate(path, str(data), config=cfg, shard=(i, 3)) for i in range(3)]
    with pytest.raises(DataError, match="cover 7 of 11 calibration units: units 3..6 are missing"):
        quantize(path, None, config=cfg, stats=[parts[0], parts[2]])
    with pytest.raises(DataError, match="overlap"):
        merge_stats([parts[0], parts[0]])
    with pytest.raises(InvalidOptionError, match="needs histograms"):
        quantize(path, None, config=cfg, stats=[calibrate(path, str(data), config=QuantizeConfig(method="minmax"))])
    other = tmp_path / "other.onnx"
    other.write_bytes(conv_classifier((4, 8), in_ch=3, size=8, seed=3, bn="random").SerializeToString())
    with pytest.raises(DataError, match="another model"):
        quantize(other, None, config=cfg, stats=parts)
    junk = tmp_path / "junk.stats"
    junk.write_text("not stats")
    with pytest.raises(DataError, match="not an onnxsq statistics file"):
        read_stats(junk)
    with pytest.raises(DataError, match="not an onnxsq statistics file"):
        read_stats(path)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(InvalidOptionError, match="--shard"):
            parse_shard(bad)


def _source(items: list[int], dims=(None, 2)):
    from onnxsq.calibration.sources import CalibrationSource, InputSpec

    feeds = [{"x": np.full((n, 2), i, np.float32)} for i, n in enumerate(items)]
    return CalibrationSource("test", lambda lo=0, hi=None: ((f"f{i}", f) for i, f in enumerate(feeds[lo:hi], lo)),
                             [InputSpec("x", np.dtype(np.float32), dims)], size=lambda: len(feeds))


@pytest.mark.parametrize("items,n", [(11, 4), (3, 5), (8, 8), (1, 1)])
def test_shard_ranges_are_contiguous_and_cover_the_set(items, n):
    from onnxsq.calibration.units import shard_items, unit_batches

    source = _source([1] * items)
    parts = [shard_items(source, 2, (i, n)) for i in range(n)]
    assert parts[0][0] == 0 and parts[-1][1] == items and all(p[2] == -(-items // 2) for p in parts)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    one = [(float(f["x"][0, 0]), k, pos) for f, k, pos in unit_batches(source, batch_size=2)]
    split = [(float(f["x"][0, 0]), k, pos) for lo, hi, _ in parts
             for f, k, pos in unit_batches(source, batch_size=2, items=(lo, hi))]
    assert split == one  # the same batches at the same positions


def test_units_cut_batches_of_multi_sample_items_and_static_batches():
    from onnxsq.calibration.units import unit_batches

    got = [(f["x"][:, 0].tolist(), n, pos) for f, n, pos in unit_batches(_source([3, 1, 2]), batch_size=2)]
    # unit 0 = items 0, 1 (4 samples: two batches), unit 1 = item 2
    assert got == [([0, 0], 2, 0), ([0, 1], 2, 0), ([2, 2], 2, 1)]
    fixed = [(n, pos) for _, n, pos in unit_batches(_source([1] * 7, dims=(3, 2)), batch_size=1)]
    assert fixed == [(3, 0), (3, 1)]  # the model's static batch of 3; the 7th sample does not fill one
    capped = [n for _, n, _ in unit_batches(_source([1] * 7), batch_size=2, count=5)]
    assert capped == [2, 2, 1]


def test_a_failure_in_the_main_process_stops_the_shard_processes(net_and_data, tmp_path, monkeypatch):
    import multiprocessing

    from onnxsq.errors import OnnxsqError
    from onnxsq.passes.quantize import shards

    seen = []
    stop = shards.Jobs.stop

    def spy(self):
        seen.extend((getattr(self.pool, "_processes", None) or {}).values())
        stop(self)

    monkeypatch.setattr(shards.Jobs, "stop", spy)
    path, data = net_and_data
    with pytest.raises(OnnxsqError, match="no such parameters file"):  # the main process fails, fast
        quantize(path, str(data), config=QuantizeConfig(), jobs=2, params=tmp_path / "missing.json")
    assert seen  # the shard processes were started ...
    # ... and none is left running. Asked of the OS: the executor's own thread may have reaped a process,
    # and then its Process object never learns an exit code.
    deadline = time.monotonic() + 15
    alive = [p.pid for p in seen]
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.1)
    assert not alive
    assert not [c for c in multiprocessing.active_children() if c.exitcode is None and _running(c.pid)]


def _running(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
