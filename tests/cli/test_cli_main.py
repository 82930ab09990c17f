"""The onnxsq group: instant help (lazy imports), command discovery, and the error boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onnxsq.errors import InvalidOptionError, OnnxsqError

BIN = Path(sys.executable).parent / "onnxsq"
HEAVY = ("onnxruntime", "torch", "onnx_graphsurgeon")


def _run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_help_imports_no_runtime_and_lists_every_command():
    # Every command's own --help too: `onnxsq --help` imports each command module to show its summary.
    code = (
        "import json, sys\n"
        "from onnxsq.cli.main import cli, run\n"
        "import click\n"
        "names = cli.list_commands(click.Context(cli))\n"
        "codes = [run(['--help'])] + [run([n, '--help']) for n in names]\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy, 'names': names}))\n"
    )
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"inspect", "verify"} <= set(result["names"])
    assert set(result["codes"]) == {0}
    assert result["heavy"] == [], f"--help imported {result['heavy']}: import them inside the command function"


def test_console_script_help_and_version():
    proc = _run(str(BIN), "--help")
    assert proc.returncode == 0 and "verify" in proc.stdout and "inspect" in proc.stdout
    proc = _run(str(BIN), "--version")
    assert proc.returncode == 0 and "onnxsq" in proc.stdout


def test_user_error_is_one_line_exit_1_in_a_real_process(tmp_path):
    missing = tmp_path / "missing.onnx"
    proc = _run(str(BIN), "inspect", str(missing))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error:") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("argv", [["no-such-command"], ["inspect"], ["inspect", "x.onnx", "--bogus"],
                                  ["verify", "a.onnx", "b.onnx", "--samples", "0"]])
def test_usage_errors_exit_2(argv, run_cli):
    result = run_cli(*argv)
    assert result.code == 2
    assert "Traceback" not in result.err


def test_onnxsq_error_message_is_collapsed_to_one_line(run_cli, monkeypatch):
    def fail(model):
        raise InvalidOptionError("first line\n  second [/x] line [bold]not markup[/bold]\n")

    monkeypatch.setattr("onnxsq.inspect.inspect_model", fail)
    result = run_cli("inspect", "whatever.onnx")
    assert result.code == 1
    assert result.err.strip() == "onnxsq: error: first line second [/x] line [bold]not markup[/bold]"


@pytest.mark.parametrize("verbose", [False, True])
def test_internal_error_exit_3_traceback_only_with_v(verbose, run_cli, monkeypatch):
    def bug(model):
        raise ZeroDivisionError("boom\nmore detail")

    monkeypatch.setattr("onnxsq.inspect.inspect_model", bug)
    result = run_cli(*(["-v"] if verbose else []), "inspect", "whatever.onnx")
    assert result.code == 3
    assert "internal error (a bug in onnxsq): ZeroDivisionError: boom" in result.err
    assert "more detail" not in result.err.split("Traceback")[0]
    if verbose:
        assert "Traceback" in result.err and "rerun with -v" not in result.err
    else:
        assert "Traceback" not in result.err and "rerun with -v for the traceback" in result.err
        assert len(result.err.strip().splitlines()) == 1


def test_verbosity_does_not_leak_between_runs(run_cli, monkeypatch):
    monkeypatch.setattr("onnxsq.inspect.inspect_model", lambda model: 1 / 0)
    assert run_cli("-v", "inspect", "x.onnx").code == 3
    result = run_cli("inspect", "x.onnx")
    assert result.code == 3 and "Traceback" not in result.err


def test_keyboard_interrupt_exits_130(run_cli, monkeypatch):
    def interrupted(model):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxsq.inspect.inspect_model", interrupted)
    result = run_cli("inspect", "x.onnx")
    assert result.code == 130 and ("Interrupted" in result.err or "Aborted" in result.err)
    assert "Traceback" not in result.err


def test_every_error_class_is_an_onnxsq_error():
    from onnxsq import errors

    for name in ("ModelLoadError", "UnsupportedModelError", "InvalidOptionError", "DataError",
                 "RuntimeMissingError", "VerificationError"):
        assert issubclass(getattr(errors, name), OnnxsqError)
