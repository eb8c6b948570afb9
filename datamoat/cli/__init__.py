"""The `datamoat` command: a thin Typer layer over the library.

Each module in this package that defines `register(app)` adds its commands;
modules import heavy libraries inside the command functions, so `--help`
stays fast. Errors the user caused print one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
from pathlib import Path

import typer

from datamoat.cli._common import err_console, json_stdout, state
from datamoat.errors import DatamoatError

__all__ = ["app", "main"]

app = typer.Typer(
    name="datamoat",
    help="From data to a safe deployment, and the data flywheel that keeps it improving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    home: Path = typer.Option(
        None, "--home", envvar="DATAMOAT_HOME", help="Workspace directory (default ./.datamoat)."
    ),
) -> None:
    state.home = home


for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    _module = importlib.import_module(f"{__name__}.{_mod}")
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    """Entry point: run the app and turn user errors into one line + exit 2."""
    try:
        # --json anywhere but after a `--`: its stdout carries one JSON object alone.
        args = sys.argv[1:]
        args = args[: args.index("--")] if "--" in args else args
        with json_stdout() if "--json" in args else contextlib.nullcontext():
            rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:  # click hands back typer.Exit(code)'s code instead of exiting
            sys.exit(rc)
    except DatamoatError as e:
        from rich.text import Text

        # The message is plain text: "[...]" in it (a path, hub:REPO@REV) must never read as markup.
        err_console.print(Text("error: ", style="red") + Text(str(e)), highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # Usage errors from the click that typer vendors: print them as click would.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        if type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        raise
