"""The ``onnxsq`` group, lazy command discovery and the error boundary.

Commands live one per module in :mod:`onnxsq.cli.commands` (``foo_bar.py`` → ``onnxsq foo-bar``) and
are imported only when named, so ``onnxsq --help`` never imports onnxruntime or torch.

Exit codes: 0 ok, 1 a user/model problem (:class:`~onnxsq.errors.OnnxsqError`, one line), 2 a usage
error (click), 3 a bug in onnxsq (traceback with ``-v``), 130 interrupted.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import OnnxsqError
from . import commands as _commands_pkg

_STATE = {"verbose": 0}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [m.name for m in pkgutil.iter_modules(_commands_pkg.__path__) if not m.name.startswith("_")]
        return sorted(n.replace("_", "-") for n in names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.list_commands(ctx):
            return None
        module = importlib.import_module(f"{_commands_pkg.__name__}.{cmd_name.replace('-', '_')}")
        command: click.Command = module.command
        _add_verbosity_options(command)
        return command


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: object) -> None:
    """-v/-q given after the command name: the same effect as before it."""
    if not value:
        return
    from .render import setup_logging

    obj = ctx.find_root().obj
    if obj is None:  # the group callback has not run (e.g. --help): nothing to configure yet
        return
    if param.name == "verbose":
        obj["verbose"] = max(obj["verbose"], int(value))
        _STATE["verbose"] = obj["verbose"]
    else:
        obj["quiet"] = True
    setup_logging(obj["verbose"], obj["quiet"])


def _add_verbosity_options(command: click.Command) -> None:
    """Accept -v/-q on every command too (`onnxsq optimize -q ...`), not only on the group."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", [])}
    if "-v" not in taken:
        command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False,
                                           callback=_set_verbosity, help="More log output (same as onnxsq -v)."))
    if "-q" not in taken:
        command.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                                           callback=_set_verbosity, help="Only errors (same as onnxsq -q)."))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug); tracebacks for internal errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no tables or progress bars.")
@click.version_option(__version__, prog_name="onnxsq")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Turn trained ONNX models into sparse, int8, power-of-two-quantized ONNX models.

    \b
    The flow (each stage is also a Python function in `import onnxsq`):
      train --stage l2 → train --stage l1 → threshold → train --stage sparse
      → optimize (fold BatchNorm) → quantize (PTQ) or train --stage qat
    """
    from .render import setup_logging

    _STATE["verbose"] = verbose
    ctx.obj = {"verbose": verbose, "quiet": quiet}
    setup_logging(verbose, quiet)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (never raises, never exits)."""
    from .render import err_console, reset_consoles

    # run() may be called many times in one process (tests, scripts): no state from a previous run.
    _STATE["verbose"] = 0
    reset_consoles()
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="onnxsq", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console().print("Aborted.")
        return 130
    except KeyboardInterrupt:
        err_console().print("Interrupted.")
        return 130
    except OnnxsqError as exc:
        from rich.markup import escape

        msg = " ".join(str(exc).split())  # one line, whatever the message held
        # escape: messages quote paths and onnxruntime errors, which may contain [brackets].
        err_console().print(f"[bold red]onnxsq: error:[/] {escape(msg)}", highlight=False, markup=True,
                            soft_wrap=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the boundary between bugs and the user
        if _STATE["verbose"]:
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        err_console().print(
            f"onnxsq: internal error (a bug in onnxsq): {type(exc).__name__}: {first}"
            + ("" if _STATE["verbose"] else " (rerun with -v for the traceback)"),
            highlight=False, markup=False, soft_wrap=True,
        )
        return 3


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
