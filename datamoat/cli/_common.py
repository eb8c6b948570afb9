"""What every CLI command shares: the workspace option, JSON output, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from datamoat.workspace import Workspace

__all__ = ["console", "err_console", "state", "open_ws", "emit", "JsonOpt"]

console = Console()
err_console = Console(stderr=True)


class _State:
    home: Path | None = None


state = _State()

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text.")


def open_ws(create: bool = False) -> Workspace:
    """The workspace named by --home / DATAMOAT_HOME / ./.datamoat."""
    return Workspace.init(state.home) if create else Workspace.open(state.home)


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def emit(obj: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print `obj` as one JSON line (with --json) or `human` text via rich."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=_default) + "\n")
        sys.stdout.flush()
    elif human is not None:
        console.print(human, highlight=False)
