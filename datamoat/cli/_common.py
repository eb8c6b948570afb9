"""What every CLI command shares: the workspace option, JSON output, errors."""

from __future__ import annotations

import contextlib
import getpass
import importlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import typer
from rich.console import Console

from datamoat.workspace import Workspace

__all__ = [
    "console",
    "err_console",
    "state",
    "open_ws",
    "emit",
    "json_stdout",
    "tls_options",
    "ConfigDefault",
    "JsonOpt",
    "CertOpt",
    "KeyOpt",
]

console = Console()
err_console = Console(stderr=True)


class _State:
    home: Path | None = None
    json_out: IO[str] | None = None  # where --json's one object goes; None: sys.stdout


state = _State()

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text.")
CertOpt = typer.Option(None, "--ssl-certfile", help="Serve HTTPS with this PEM certificate (chain).")
KeyOpt = typer.Option(None, "--ssl-keyfile", help="The certificate's PEM private key.")


def tls_options(certfile: Path | None, keyfile: Path | None) -> dict[str, Any]:
    """uvicorn's TLS arguments, or none; a one-line error when half is given.

    >>> tls_options(None, None)
    {}
    """
    if (certfile is None) != (keyfile is None):
        from datamoat.errors import BadInput

        raise BadInput("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    for p in (certfile, keyfile):
        if p is not None and not p.is_file():
            from datamoat.errors import NotFound

            raise NotFound(f"no file at {p}: give the PEM certificate and key paths")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)} if certfile else {}


class ConfigDefault:
    """An option's default read from a config's defaults, so the CLI restates none of them.

    `config` is ``"module:Class"`` and `param` a `Config.get_params` name
    (``distill__train__epochs``); with `present`, the default is whether that
    nested config is set (a step that runs); with `item`, it is that element
    of a tuple-valued field (``scale`` item 0). The config is imported only when
    a value or the help text is needed: config modules import torch, and
    `datamoat --help` and commands that never train must not wait for it.

    >>> ConfigDefault("datamoat.train:TrainConfig", "epochs")()
    3
    """

    def __init__(self, config: str, param: str, *, present: bool = False, item: int | None = None) -> None:
        self.config, self.param, self.present, self.item = config, param, present, item

    def __call__(self) -> Any:  # click calls a callable default for the value
        module, _, name = self.config.partition(":")
        value = getattr(importlib.import_module(module), name)().get_params()[self.param]
        if self.item is not None:
            value = value[self.item]
        return value is not None if self.present else value

    def __str__(self) -> str:  # what --help prints after "default:"
        return str(self())

    def __bool__(self) -> bool:  # an on/off flag's help names the side the default takes
        return bool(self())

    def __repr__(self) -> str:
        return f"ConfigDefault({self.config!r}, {self.param!r})"


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


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """For a --json command: stdout holds the one JSON object and nothing else.

    Whatever else is printed while the command runs, by our code or by a
    library (ONNX Runtime's calibration prints progress with print(); a C
    library may write to file descriptor 1), goes to stderr: sys.stdout and
    descriptor 1 both point there until `emit` writes the object to the real
    stdout.
    """
    out = sys.stdout
    out.flush()
    try:
        real = out.fileno() == 1  # in-process test runners swap sys.stdout for a buffer
    except (AttributeError, OSError, ValueError):
        real = False
    saved = os.dup(1)
    os.dup2(2, 1)
    state.json_out = os.fdopen(os.dup(saved), "w") if real else out
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = out
        os.dup2(saved, 1)
        os.close(saved)
        if real:
            state.json_out.close()
        state.json_out = None


def emit(obj: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print `obj` as one JSON line (with --json) or `human` text via rich."""
    if as_json:
        out = state.json_out or sys.stdout
        out.write(json.dumps(obj, default=_default) + "\n")
        out.flush()
    elif human is not None:
        console.print(human, highlight=False, soft_wrap=True)  # a pipe gets whole lines, not 80-column ones


def open_registry(url: str | None) -> tuple[Any, Any]:
    """(workspace, Registry) for a command's --registry URL (default: the workspace's)."""
    from datamoat.registry.core import Registry, registry_url

    ws = open_ws()
    return ws, Registry(registry_url(ws, url))


def admin_actor(reg: Any, token: str | None) -> str:
    """The actor for the audit log: the admin token's name, or the OS user
    while the registry has no admin token yet (bootstrap)."""
    if reg.has_token("admin") or token:
        return reg.check_token(token, "admin")
    return os.environ.get("USER") or getpass.getuser()


def finish_control(reg: Any, out: dict, as_json: bool, text: str, wait: float, event: str) -> None:
    """Wait for the servers' acknowledgements of a control change, send the `event` webhooks, then
    print the result (a webhook that failed every retry is named; the change stands)."""
    from datamoat.registry.alerts import send_alert

    acks = reg.wait_for_acks(out["generation"], timeout=wait) if wait > 0 else {"acked": [], "missing": []}
    out["alerts"] = send_alert(reg, event, dict(out))
    out["servers"] = acks
    for failed in (a for a in out["alerts"] if not a["ok"]):
        text += f"\n[yellow]webhook {failed['id']} not delivered after {failed['attempts']} tries: {failed['status']}[/yellow]"
    if acks["missing"]:
        text += f"\n[yellow]not acknowledged within {wait:g}s by: {', '.join(acks['missing'])}[/yellow]"
    elif acks["acked"]:
        text += f"\nacknowledged by {len(acks['acked'])} server(s)"
    emit(out, as_json, text)


def nproc_option(verb: str = "train") -> Any:
    """--nproc N, for the commands that train (or, with `verb` "predict", predict): the same command on
    N processes through torchrun."""
    how = (
        "DistributedDataParallel: gloo on the CPU, NCCL with one GPU each); the batch size stays the global batch"
        if verb == "train"
        else "gloo on the CPU, NCCL with one GPU each; each takes every N-th batch, rank 0 writes them in order)"
    )
    return typer.Option(
        1,
        "--nproc",
        help=f"{verb.capitalize()} on N processes of this machine (torchrun, {how}. "
        "Several machines: run torchrun yourself (README).",
    )


def device_option() -> Any:
    """--device, for the commands that run a model in PyTorch (checked by `check_device` or `relaunch`)."""
    return typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")


def check_device(device: str) -> None:
    """Refuse a --device this machine lacks before any work, in one line (exit 2)."""
    from datamoat.train.device import resolve_device

    resolve_device(device)


def relaunch(nproc: int, check: Callable[[], Any] | None = None, device: str = "auto") -> None:
    """With --nproc N > 1: run this same command on N processes through torchrun, then exit with its
    code. `check` first validates what the command names, so a mistake is said once, here, rather
    than once by every rank. Under torchrun (a rank) it joins the process group for `device` and
    returns, as it does with N = 1: the command runs here. A `device` this machine lacks is refused
    first, before any work."""
    from datamoat.errors import BadInput
    from datamoat.train import distributed
    from datamoat.train.device import resolve_device

    check_device(device)
    if "WORLD_SIZE" in os.environ:
        if nproc != 1:
            raise BadInput("--nproc starts torchrun itself: under torchrun leave it out")
        distributed.setup(resolve_device(device))
        return
    if nproc == 1:
        return
    if nproc < 1:
        raise BadInput(f"--nproc must be at least 1, got {nproc}")
    if check is not None:
        check()
    # With --json this process's descriptor 1 points at stderr; the ranks print to the real stdout.
    real = state.json_out if state.json_out is not None and not isinstance(state.json_out, io.StringIO) else None
    sys.exit(distributed.launch(nproc, distributed.without_option(sys.argv[1:], "--nproc"), real))
