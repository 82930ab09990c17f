"""``onnxsq calibrate`` shards and ``onnxsq quantize --stats / --jobs``: the one-pass model, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from builders import conv_classifier


@pytest.fixture
def net_and_data(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(conv_classifier((4, 8), in_ch=3, size=8, seed=5, bn="random").SerializeToString())
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):
        np.save(data / f"{i}.npy", (rng.standard_normal((3, 8, 8)) * (i + 1)).astype(np.float32))
    return path, data


def test_shards_then_stats_give_the_one_pass_model(run_cli, net_and_data, tmp_path, untouched):
    path, data = net_and_data
    untouched(path)
    shards = []
    for i in range(3):
        out = tmp_path / f"part{i}.stats"
        r = run_cli("calibrate", path, "--calib", data, "--shard", f"{i}/3", "-o", out, "--batch-size", "2")
        assert r.code == 0, r.err
        assert f"{i}/3" in r.out
        shards.append(out)
    one, merged, jobs = tmp_path / "one.onnx", tmp_path / "merged.onnx", tmp_path / "jobs.onnx"
    assert run_cli("quantize", path, "--calib", data, "-o", one, "--batch-size", "2").code == 0
    r = run_cli("quantize", path, "--stats", shards[2], "--stats", shards[0], "--stats", shards[1], "-o", merged,
                "-q")
    assert r.code == 0, r.err
    r = run_cli("quantize", path, "--calib", data, "--jobs", "2", "--batch-size", "2", "-o", jobs, "-q")
    assert r.code == 0, r.err
    assert merged.read_bytes() == one.read_bytes() == jobs.read_bytes()


@pytest.mark.parametrize("args,match", [
    (["--shard", "3/3"], "--shard '3/3': expected I/N"),
    (["--shard", "x"], "expected I/N"),
])
def test_calibrate_bad_options_one_line(run_cli, net_and_data, tmp_path, args, match):
    path, data = net_and_data
    r = run_cli("calibrate", path, "--calib", data, "-o", tmp_path / "s.stats", *args)
    assert r.code == 1 and match in r.err and len(r.err.strip().splitlines()) == 1


def test_quantize_refuses_files_that_are_not_our_stats(run_cli, net_and_data, tmp_path):
    path, data = net_and_data
    bogus = tmp_path / "bogus.stats"
    bogus.write_bytes(b"\x1f\x8b not really gzip")
    for f in (bogus, path):
        r = run_cli("quantize", path, "--stats", f, "-o", tmp_path / "q.onnx")
        assert r.code == 1 and "not an onnxsq statistics file" in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1
    part = tmp_path / "p0.stats"
    assert run_cli("calibrate", path, "--calib", data, "--shard", "0/2", "-o", part).code == 0
    r = run_cli("quantize", path, "--stats", part, "-o", tmp_path / "q.onnx")
    assert r.code == 1 and "are missing" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("calibrate", path, "--calib", data, "-o", path)
    assert r.code == 1 and "overwrite the model" in r.err


def test_image_folder_shards_with_size_and_preprocessing(run_cli, tmp_path):
    from PIL import Image

    path = tmp_path / "net.onnx"
    path.write_bytes(conv_classifier((4, 8), in_ch=3, size=8, seed=6, bn="random", batch="N").SerializeToString())
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (9 + i, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    opts = ["--mean", "120", "110", "100", "--std", "60", "60", "60", "--channel-order", "bgr"]
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"p{i}.stats")
        assert run_cli("calibrate", path, "--calib", folder, "--shard", f"{i}/2", "-o", parts[-1], *opts).code == 0
    one, merged = tmp_path / "one.onnx", tmp_path / "merged.onnx"
    assert run_cli("quantize", path, "--calib", folder, "-o", one, *opts).code == 0
    r = run_cli("quantize", path, "--stats", parts[0], "--stats", parts[1], "--calib", folder, "-o", merged, *opts)
    assert r.code == 0, r.err
    assert merged.read_bytes() == one.read_bytes()


def test_sources_that_cannot_be_split_are_one_line_errors(run_cli, net_and_data, tmp_path):
    path, _ = net_and_data
    gen = tmp_path / "gen.py"
    gen.write_text("import numpy as np\ndef feeds():\n    return [{'input': np.zeros((1, 3, 8, 8), np.float32)}]\n")
    r = run_cli("calibrate", path, "--calib", f"{gen}:feeds", "--shard", "0/2", "-o", tmp_path / "s.stats")
    assert r.code == 1 and "cannot be split into shards" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("calibrate", path, "--calib", f"{gen}:feeds", "-o", tmp_path / "s.stats")  # one pass: fine
    assert r.code == 0, r.err
    r = run_cli("quantize", path, "--stats", tmp_path / "s.stats", "--jobs", "2", "-o", tmp_path / "q.onnx")
    assert r.code == 0 and "--jobs is ignored" in r.err


def test_stats_takes_a_folder_or_a_quoted_pattern(run_cli, net_and_data, tmp_path):
    path, data = net_and_data
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(2):
        r = run_cli("calibrate", path, "--calib", data, "--shard", f"{i}/2", "-o", parts / f"part{i}.stats")
        assert r.code == 0, r.err
    one, folder, pattern = tmp_path / "one.onnx", tmp_path / "folder.onnx", tmp_path / "pattern.onnx"
    assert run_cli("quantize", path, "--calib", data, "-o", one, "-q").code == 0
    assert run_cli("quantize", path, "--stats", parts, "-o", folder, "-q").code == 0
    assert run_cli("quantize", path, "--stats", str(parts / "part*.stats"), "-o", pattern, "-q").code == 0
    assert folder.read_bytes() == pattern.read_bytes() == one.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    for value, why in ((empty, "no *.stats in the folder"), (str(tmp_path / "nope*.stats"), "matches nothing")):
        r = run_cli("quantize", path, "--stats", value, "-o", tmp_path / "x.onnx")
        assert r.code != 0 and why in r.err and len(r.err.strip().splitlines()) == 1, r.err
