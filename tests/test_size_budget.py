"""The size budget of the package (pyproject's ``[tool.onnxsq.size-budget]``): no module over its line budget,
no function over its own, except the few named in ``[tool.onnxsq.size-exceptions]``. It counts; it does
not time. The simulator (``onnxsq/simulate``) keeps its own budget while it is being written."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["onnxsq"]
BUDGET, EXCEPTIONS = CONFIG["size-budget"], CONFIG["size-exceptions"]
NOT_COUNTED = ("onnxsq/simulate/",)


def _modules() -> list[Path]:
    return [p for p in sorted((REPO / "onnxsq").rglob("*.py"))
            if not p.relative_to(REPO).as_posix().startswith(NOT_COUNTED)]


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(lines per module, lines per function ``path:name``; nested functions count on their own too)."""
    modules, functions = {}, {}
    for path in _modules():
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text(encoding="utf-8")
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                functions[key] = max(functions.get(key, 0), node.end_lineno - node.lineno + 1)
    return modules, functions


def test_no_module_or_function_over_budget():
    modules, functions = sizes()
    over = [f"{m}: {n} lines" for m, n in modules.items() if n > BUDGET["module_lines"] and m not in EXCEPTIONS]
    over += [f"{f}: {n} lines" for f, n in functions.items() if n > BUDGET["function_lines"] and f not in EXCEPTIONS]
    assert not over, "over the size budget (split it, or name it in [tool.onnxsq.size-exceptions]):\n" + "\n".join(over)


def test_every_exception_is_still_needed():
    """An exception that fits the budget again is dropped from the list, so the list stays short and true."""
    modules, functions = sizes()
    limits = {**{m: (n, BUDGET["module_lines"]) for m, n in modules.items()},
              **{f: (n, BUDGET["function_lines"]) for f, n in functions.items()}}
    stale = [k for k in EXCEPTIONS if k not in limits or limits[k][0] <= limits[k][1]]
    assert not stale, f"no longer over budget (or gone): {stale}"
