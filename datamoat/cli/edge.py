"""Commands: keys generate, bundle, edge run / install, rollout, fleet
enroll / status / abort / events / serve."""

from __future__ import annotations

from pathlib import Path

import typer

from datamoat.cli._common import CertOpt, JsonOpt, KeyOpt, console, emit, err_console, open_ws, tls_options

keys_app = typer.Typer(help="Ed25519 keys that sign bundles.", no_args_is_help=True)
edge_app = typer.Typer(help="Run a device: serve predictions, follow the control server.", no_args_is_help=True)
fleet_app = typer.Typer(help="Devices, rollouts and the control server.", no_args_is_help=True)

RegistryOpt = typer.Option(None, "--registry", envvar="DATAMOAT_REGISTRY_URL", help="Registry database URL.")
TokenOpt = typer.Option(None, "--token", envvar="DATAMOAT_TOKEN", help="Admin token (once any admin token exists).")
TrustOpt = typer.Option(..., "--trust", help="Public key the device accepts bundles from (repeatable).")


def _fleet(registry: str | None):
    from datamoat.edge.fleet import Fleet
    from datamoat.registry.core import Registry, registry_url

    return Fleet(Registry(registry_url(None if registry else open_ws(), registry)))


def _actor(fleet, token: str | None) -> str:
    from datamoat.cli._common import admin_actor

    return admin_actor(fleet.registry, token)


def _version(fleet, model: str, actor: str) -> str:
    """A registry version id: a version ref, or a catalog model registered on the fly."""
    from datamoat.errors import NotFound

    try:
        return fleet.registry.version(model)["id"]
    except NotFound:
        from datamoat.registry.register import resolve_version

        return resolve_version(open_ws(), fleet.registry, model, actor=actor)


@keys_app.command("generate")
def keys_generate(
    out: Path = typer.Option(Path("datamoat-release.pem"), "--out", "-o", help="Private key path (written 0600)."),
    public: Path = typer.Option(None, "--public", help="Public key path (default: OUT with .pub)."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files."),
    as_json: bool = JsonOpt,
) -> None:
    """Make a signing key pair: keep the private key on the build machine, give devices the .pub."""
    from datamoat.edge.keys import generate_keys

    res = generate_keys(out, public, force=force)
    emit(res, as_json, f"private key {res['private']} (0600), public key {res['public']}, key id {res['key_id']}")


def bundle(
    model: str = typer.Argument(..., help="Registry version, or a catalog model (exported and registered)."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the bundle file here (for USB installs)."),
    key: Path = typer.Option(..., "--key", help="Private signing key (from `datamoat keys generate`)."),
    abstain_threshold: float = typer.Option(None, "--abstain-threshold", help="Abstain below this top probability."),
    selftest: int = typer.Option(4, "--selftest", help="Number of self-test vectors."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Build, sign and publish a bundle: model, labels, preprocessing, policy, self-test vectors."""
    from datamoat.edge.bundle import BundleConfig
    from datamoat.edge.keys import load_private_key

    fleet = _fleet(registry)
    actor = _actor(fleet, token)
    vid = _version(fleet, model, actor)
    cfg = BundleConfig(selftest_count=selftest, abstain_threshold=abstain_threshold)
    info = fleet.publish_version(vid, load_private_key(key), actor=actor, config=cfg)
    if output:
        from datamoat.workspace import atomic_write

        atomic_write(output, fleet.bundle_bytes(info["sha"]))
        info["file"] = str(output)
    emit(
        info,
        as_json,
        f"bundle {info['sha'][:12]}: version {vid}, sequence {info['seq']}, {info['size']} bytes"
        + (f", written to {output}" if output else ""),
    )


@edge_app.command("run")
def edge_run(
    server: str = typer.Option("", "--server", help="Control server URL (empty: offline, USB installs only)."),
    device_id: str = typer.Option(..., "--device-id"),
    token: str = typer.Option("", "--token", envvar="DATAMOAT_DEVICE_TOKEN", help="This device's token."),
    trust: list[Path] = TrustOpt,
    state_dir: Path = typer.Option(..., "--state-dir", help="Where bundles and state live."),
    group: str = typer.Option("default", "--group"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8100, "--port"),
    poll_interval: float = typer.Option(5.0, "--poll-interval", help="Seconds between polls."),
    health_window: int = typer.Option(20, "--health-window", help="Predictions watched after a swap."),
    max_abstain_rate: float = typer.Option(0.5, "--max-abstain-rate"),
    max_error_rate: float = typer.Option(0.2, "--max-error-rate"),
    ort_threads: int = typer.Option(1, "--ort-threads"),
    upload: bool = typer.Option(
        True, "--upload/--no-upload", help="Upload low-confidence inputs for people to label in /review."
    ),
    upload_max_items: int = typer.Option(500, "--upload-max-items", help="Outbox cap; the oldest are dropped first."),
    require_https: bool = typer.Option(
        False, "--require-https", help="Refuse a control server URL that is not https:// (recommended)."
    ),
    ca_cert: Path = typer.Option(None, "--ca-cert", help="PEM CA bundle that signed the control server's certificate."),
    control_trust: list[Path] = typer.Option(
        [], "--control-trust", help="Public key of the control server's --control-key; repeat to trust several."
    ),
    insecure_control: bool = typer.Option(
        False, "--insecure-control", help="Act on unsigned control answers (a lab bench; never in the field)."
    ),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve predictions on localhost and follow the control server (polls, downloads, rollbacks)."""
    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.server import run_edge

    cfg = EdgeConfig(
        device_id=device_id,
        state_dir=str(state_dir),
        trust=tuple(map(str, trust)),
        server=server,
        token=token,
        group=group,
        poll_interval_s=poll_interval,
        health_window=health_window,
        max_abstain_rate=max_abstain_rate,
        max_error_rate=max_error_rate,
        ort_threads=ort_threads,
        upload_low_confidence=upload,
        upload_max_items=upload_max_items,
        require_https=require_https,
        ca_cert=str(ca_cert) if ca_cert else "",
        control_trust=tuple(map(str, control_trust)),
        insecure_control=insecure_control,
    )
    err_console.print(
        f"edge device {device_id} on http://{host}:{port}, server {server or '(offline)'}", highlight=False
    )
    run_edge(cfg, host=host, port=port, log_level=log_level)


@edge_app.command("install")
def edge_install(
    file: Path = typer.Argument(..., help="Bundle file (e.g. from a USB stick)."),
    trust: list[Path] = TrustOpt,
    state_dir: Path = typer.Option(
        None,
        "--state-dir",
        help="The device's state directory (runtime stopped; with --runtime, for its install token).",
    ),
    runtime: str = typer.Option(None, "--runtime", help="Or: the running runtime's URL, e.g. http://127.0.0.1:8100."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Accept an older bundle sequence."),
    as_json: bool = JsonOpt,
) -> None:
    """Apply a hand-carried bundle with the same verification and self-test as an OTA update."""
    from datamoat.errors import BadInput, DatamoatError

    data = file.read_bytes()
    if runtime:
        import httpx

        if allow_downgrade:
            raise BadInput("a running runtime never accepts a downgrade: stop it and use --state-dir DIR")
        if not state_dir:
            raise BadInput("--runtime needs --state-dir DIR too: the install token is DIR/install.token")
        token = (state_dir / "install.token").read_text().strip() if (state_dir / "install.token").is_file() else ""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        out = httpx.post(f"{runtime.rstrip('/')}/v1/edge/install", content=data, headers=headers, timeout=120).json()
    elif state_dir:
        from datamoat.edge.config import EdgeConfig
        from datamoat.edge.runtime import EdgeRuntime

        rt = EdgeRuntime(EdgeConfig(state_dir=str(state_dir), trust=tuple(map(str, trust))))
        try:
            out = rt.install_bytes(data, source="usb", allow_downgrade=allow_downgrade)
        finally:
            rt.close()
    else:
        raise BadInput("say where to install: --state-dir DIR (runtime stopped) or --runtime URL (running)")
    emit(out, as_json, f"{out.get('status')}: {out.get('reason') or out.get('error')}")
    if out.get("status") != "installed":
        raise DatamoatError(f"bundle not installed ({out.get('status')}): {out.get('reason') or out.get('error')}")


def rollout(
    model: str = typer.Argument(..., help="Registry version (or catalog model) to roll out."),
    group: str = typer.Option(..., "--group", "-g"),
    percent: float = typer.Option(..., "--percent", "-p", help="Share of the group, by a stable hash of device ids."),
    abort_if_failed_percent: float = typer.Option(
        None, "--abort-if-failed-percent", help="Abort and return the fleet when this share of assigned devices failed."
    ),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Let devices install an older bundle."),
    key: Path = typer.Option(None, "--key", help="Sign a new bundle with this key if the version has none."),
    bundle_ref: str = typer.Option(None, "--bundle", help="A specific published bundle (sha prefix)."),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Start a staged rollout, or raise its percent (devices already in stay in)."""
    from datamoat.errors import BadInput

    fleet = _fleet(registry)
    actor = _actor(fleet, token)
    if bundle_ref:
        b = fleet.bundle(bundle_ref)
    else:
        vid = _version(fleet, model, actor)
        b = fleet.latest_bundle(vid)
        if b is None:
            if key is None:
                raise BadInput(f"version {vid} has no bundle: run `datamoat bundle {vid} --key KEY` or pass --key")
            from datamoat.edge.keys import load_private_key

            b = fleet.publish_version(vid, load_private_key(key), actor=actor)
    r = fleet.start_rollout(
        b["sha"], group, percent, actor=actor, abort_percent=abort_if_failed_percent, allow_downgrade=allow_downgrade
    )
    emit(
        r,
        as_json,
        f"rollout {r['id']}: bundle {b['sha'][:12]} (version {b['version_id']}, sequence {b['seq']}) "
        f"to {r['percent']:g}% of {group}",
    )


@fleet_app.command("enroll")
def fleet_enroll(
    device_id: str = typer.Argument(...),
    group: str = typer.Option("default", "--group", "-g"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register a device (or rotate its token); the token is printed once and stored hashed."""
    fleet = _fleet(registry)
    new = fleet.enroll(device_id, group, actor=_actor(fleet, token))
    emit(
        {"device_id": device_id, "group": group, "token": new},
        as_json,
        f"device {device_id} in {group}; its token (shown once):\n{new}",
    )


@fleet_app.command("status")
def fleet_status(
    group: str = typer.Option(None, "--group", "-g"), registry: str = RegistryOpt, as_json: bool = JsonOpt
) -> None:
    """Each device's version, last heartbeat, health and rollout state."""
    from rich.table import Table

    fleet = _fleet(registry)
    rows = fleet.status(group)
    if as_json:
        emit({"devices": rows, "rollouts": fleet.rollouts(group), "bundles": fleet.bundles()}, True)
        return
    t = Table("device", "group", "version", "seq", "last heartbeat", "health", "rollout")
    for r in rows:
        age = "never" if r["last_heartbeat_s"] is None else f"{r['last_heartbeat_s']:.1f}s ago"
        t.add_row(
            r["device_id"], r["group"], str(r["version"]), str(r["sequence"]), age, r["health"], r["rollout"] or ""
        )
    console.print(t)


@fleet_app.command("abort")
def fleet_abort(
    group: str = typer.Option(..., "--group", "-g"),
    reason: str = typer.Option(..., "--reason"),
    token: str = TokenOpt,
    registry: str = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop a group's rollout: every device returns to the baseline bundle."""
    fleet = _fleet(registry)
    r = fleet.abort_rollout(group, actor=_actor(fleet, token), reason=reason)
    emit(r, as_json, f"rollout {r['id']} aborted: {r['reason']}")


@fleet_app.command("events")
def fleet_events(since: int = typer.Option(0, "--since"), registry: str = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """The fleet log: rollout changes and every device's reports."""
    import datetime as dt

    evs = _fleet(registry).events(since)
    lines = [
        f"{dt.datetime.fromtimestamp(e['ts']).isoformat(timespec='milliseconds')} {e['device_id'] or '-':<12} "
        f"{e['kind']:<16} {e['rollout_id'] or '':<10} {e['detail'].get('reason') or ''}"
        for e in evs
    ]
    emit({"events": evs}, as_json, "\n".join(lines) or "no events")


@fleet_app.command("serve")
def fleet_serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8200, "--port"),
    chunk_size: int = typer.Option(64 * 1024, "--chunk-size", help="Bytes per chunk of a bundle download."),
    chunk_delay: float = typer.Option(0.0, "--chunk-delay", help="Seconds to pause after each chunk (throttle)."),
    upload_max_per_hour: int = typer.Option(600, "--upload-max-per-hour", help="Samples a device may upload an hour."),
    review_max_open: int = typer.Option(
        10_000, "--review-max-open", help="Open review items the registry may hold; uploads past it wait on the device."
    ),
    registry: str = RegistryOpt,
    ssl_certfile: Path = CertOpt,
    ssl_keyfile: Path = KeyOpt,
    control_key: Path = typer.Option(
        None, "--control-key", help="Ed25519 key (`datamoat keys generate`) that signs every answer to devices."
    ),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Run the control server devices poll."""
    import uvicorn

    from datamoat.edge.control import ControlConfig, create_control_app
    from datamoat.edge.keys import load_private_key

    key = load_private_key(control_key) if control_key else None

    fleet = _fleet(registry)
    app = create_control_app(
        fleet.registry,
        ControlConfig(
            chunk_size=chunk_size,
            chunk_delay_s=chunk_delay,
            upload_max_per_hour=upload_max_per_hour,
            review_max_open=review_max_open,
        ),
        key,
    )
    if key is None:
        err_console.print(
            "warning: no --control-key: answers are unsigned, and devices refuse them unless "
            "started with --insecure-control",
            highlight=False,
        )
    tls = tls_options(ssl_certfile, ssl_keyfile)
    err_console.print(f"control server on {'https' if tls else 'http'}://{host}:{port}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, **tls)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(edge_app, name="edge")
    app.add_typer(fleet_app, name="fleet")
    app.command("bundle")(bundle)
    app.command("rollout")(rollout)
