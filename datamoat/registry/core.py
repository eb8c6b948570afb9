"""The model registry: versions, aliases, incident controls and an audit log.

A registry version is an ONNX artifact (fp32 or int8) plus what serving needs:
classes, preprocessing, lineage (dataset, parent model, recipe) and metrics.
The artifact bytes live in the registry database too, so a server on another
machine needs only the database URL.

Storage is SQLAlchemy Core: SQLite by default (next to the workspace
catalog), or any URL such as ``postgresql+psycopg://user@host/db`` so several
servers on several machines share one registry.

Every control change (promote, rollback, takedown, suppress and their undos,
and a version's review policy) runs in one transaction that also appends to the audit log and bumps a global
*generation* counter. Servers poll the generation, apply the new state, and
acknowledge it; `wait_for_acks` lets the operator's command return only once
every live server has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput, NotFound
from datamoat.registry.alerts import AlertStore
from datamoat.registry.chain import add_chain_column, append_chained, append_only_ddl, verify_chain
from datamoat.registry.policy import clean_policy
from datamoat.registry.profiles import ProfileStore
from datamoat.registry.releases import ReleaseStore
from datamoat.registry.schema import WRITE_OPTION, ensure_schema
from datamoat.registry.servers import ServerRoster
from datamoat.registry.tables import (
    ALL_ALIASES,
    POLICY_FIELDS,
    ROLES,
    SUPPRESS_MODES,
    aliases,
    audit,
    blobs,
    meta,
    policies,
    state,
    suppressions,
    takedowns,
    versions,
)
from datamoat.registry.tokens import AuthError, TokenStore, hash_token
from datamoat.workspace import Workspace, make_dirs, touch_private

__all__ = [
    "Registry",
    "registry_url",
    "ROLES",
    "SUPPRESS_MODES",
    "POLICY_FIELDS",
    "AuthError",
    "hash_token",
]

_WRITE = WRITE_OPTION  # this transaction writes (see Registry.transaction)


def _add_audit_chain(conn: sa.Connection) -> None:
    add_chain_column(conn, audit)  # an audit log from before chaining: its old rows stay unchained


# Each step migrates the registry's tables from version i to i + 1 (datamoat.registry.schema).
REGISTRY_MIGRATIONS = [_add_audit_chain]


def _after_create(conn: sa.Connection) -> None:
    for stmt in append_only_ddl(conn.dialect.name, audit.name):
        conn.exec_driver_sql(stmt)
    if conn.execute(sa.select(state.c.value).where(state.c.key == "generation")).first() is None:
        conn.execute(state.insert().values(key="generation", value=0))


AUDIT_FIELDS = ("ts", "actor", "action", "target", "reason", "details", "generation")


def registry_url(ws: Workspace | None = None, url: str | None = None) -> str:
    """`url`, else `$DATAMOAT_REGISTRY_URL`, else SQLite beside the workspace catalog."""
    url = url or os.environ.get("DATAMOAT_REGISTRY_URL")
    if url:
        return url
    ws = ws or Workspace.open()
    return f"sqlite:///{(ws.root / 'registry.db').resolve()}"


class Registry(TokenStore, ServerRoster, ProfileStore, AlertStore, ReleaseStore):
    """Model versions, aliases and incident controls in one SQL database.

    >>> reg = Registry("sqlite://")   # in memory
    >>> reg.generation()
    0
    """

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            db = sa.engine.make_url(url).database
            if db and db != ":memory:" and not Path(db).exists():
                make_dirs(Path(db).parent)
                touch_private(Path(db))  # tokens' hashes and the audit log: the owner's alone
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = sa.pool.StaticPool
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(conn, _):  # WAL + busy timeout, as for the catalog
                # pysqlite would send BEGIN only before the first write, so a
                # read-then-write could act on a stale read: the "begin" event
                # below opens every transaction itself instead.
                conn.isolation_level = None
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn):  # readers stay concurrent; a write transaction holds the write lock from its start
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

        ensure_schema(self.engine, "registry", meta, REGISTRY_MIGRATIONS, after=_after_create)

    @contextlib.contextmanager
    def transaction(self, lock: int = 1) -> Iterator[sa.Connection]:
        """A write transaction in which what is read stays true until commit.

        Control-plane writes are few, so they are serialised outright: SQLite
        takes its write lock at BEGIN (IMMEDIATE), PostgreSQL takes the
        transaction-scoped advisory lock `lock` first (1: the registry; the
        fleet's event log uses its own, so device heartbeats do not queue
        behind operators). Every read-then-write
        (promote, rollback, takedown, a rollout) then sees the state the
        previous one committed.

        >>> reg = Registry("sqlite://")
        >>> with reg.transaction() as conn:
        ...     conn.execute(sa.select(state.c.value)).scalar_one()
        0
        """
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.engine.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
                yield conn

    # -- helpers ---------------------------------------------------------------
    def audit_event(
        self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any
    ) -> int:
        """Audit a change made in `conn`'s transaction and advance the control generation (servers
        reload); returns the new generation. For the registry's mixins (`ProfileStore`)."""
        return self._bump(conn, actor, action, target, reason, **details)

    def _bump(self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any) -> int:
        conn.execute(state.update().where(state.c.key == "generation").values(value=state.c.value + 1))
        gen = conn.execute(sa.select(state.c.value).where(state.c.key == "generation")).scalar_one()
        row = {
            "ts": time.time(),
            "actor": actor,
            "action": action,
            "target": target,
            "reason": reason,
            "details": json.dumps(details, sort_keys=True),
            "generation": gen,
        }
        append_chained(conn, audit, row, AUDIT_FIELDS)
        return gen

    def generation(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(state.c.value).where(state.c.key == "generation")).scalar_one()

    # -- versions ----------------------------------------------------------------
    def register(self, onnx_bytes: bytes, *, name: str, kind: str, info: dict[str, Any], actor: str) -> str:
        """Store an ONNX artifact as a version; returns its id (a content hash)."""
        check_choice("kind", kind, ("fp32", "int8"))
        for key in ("classes", "preprocess"):
            check(key in info, f"version info needs {key!r}")
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        vid = hashlib.sha256((sha + json.dumps(info, sort_keys=True)).encode()).hexdigest()[:12]
        with self.transaction() as conn:
            if conn.execute(sa.select(versions.c.id).where(versions.c.id == vid)).first():
                return vid
            if not conn.execute(sa.select(blobs.c.sha).where(blobs.c.sha == sha)).first():
                conn.execute(blobs.insert().values(sha=sha, data=onnx_bytes))
            conn.execute(
                versions.insert().values(
                    id=vid,
                    name=name,
                    created=time.time(),
                    kind=kind,
                    onnx_sha=sha,
                    info=json.dumps(info, sort_keys=True),
                )
            )
            self._bump(conn, actor, "register", vid, "", name=name, kind=kind, onnx_sha=sha)
        return vid

    def versions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(versions).order_by(versions.c.created)).mappings().all()
        return [{**r, "info": json.loads(r["info"])} for r in rows]

    def version(self, ref: str) -> dict[str, Any]:
        """A version by id, unique id prefix, or name (newest wins)."""
        rows = self.versions()
        for match in (
            [r for r in rows if r["id"] == ref],
            [r for r in rows if len(ref) >= 4 and r["id"].startswith(ref)],
            [r for r in rows if r["name"] == ref][-1:],
        ):
            if len(match) == 1:
                return match[0]
            if len(match) > 1:
                raise BadInput(f"version prefix {ref!r} is ambiguous: give more characters")
        raise NotFound(f"unknown registry version {ref!r}: `datamoat registry list` shows them")

    def artifact(self, sha: str) -> bytes:
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(blobs.c.data).where(blobs.c.sha == sha)).scalar_one_or_none()
        if data is None:
            raise NotFound(f"artifact {sha[:12]} is not in the registry")
        return bytes(data)

    # -- aliases -------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {r.alias: r.version_id for r in conn.execute(sa.select(aliases))}

    def promote(self, ref: str, alias: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Point `alias` at a version; the previous holder is kept for rollback."""
        check(bool(alias) and alias != ALL_ALIASES and len(alias) <= 100, f"invalid alias {alias!r}")
        vid = self.version(ref)["id"]
        with self.transaction() as conn:
            row = conn.execute(sa.select(aliases).where(aliases.c.alias == alias)).first()
            if row is None:
                conn.execute(aliases.insert().values(alias=alias, version_id=vid, history="[]", updated=time.time()))
                previous = None
            else:
                previous = row.version_id
                hist = json.loads(row.history) + ([previous] if previous != vid else [])
                conn.execute(
                    aliases.update()
                    .where(aliases.c.alias == alias)
                    .values(version_id=vid, history=json.dumps(hist), updated=time.time())
                )
            self.retire_releases(conn, alias, vid, actor)
            gen = self._bump(conn, actor, "promote", alias, reason, version=vid, previous=previous)
        return {"alias": alias, "version": vid, "previous": previous, "generation": gen}

    def rollback(self, alias: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Point `alias` back at its previous holder."""
        with self.transaction() as conn:
            row = conn.execute(sa.select(aliases).where(aliases.c.alias == alias)).first()
            if row is None:
                raise NotFound(f"unknown alias {alias!r}: `datamoat registry list` shows aliases")
            hist = json.loads(row.history)
            if not hist:
                raise BadInput(f"alias {alias!r} has no previous version to roll back to")
            target = hist.pop()
            conn.execute(
                aliases.update()
                .where(aliases.c.alias == alias)
                .values(version_id=target, history=json.dumps(hist), updated=time.time())
            )
            self.retire_releases(conn, alias, target, actor)
            gen = self._bump(conn, actor, "rollback", alias, reason, version=target, previous=row.version_id)
        return {"alias": alias, "version": target, "previous": row.version_id, "generation": gen}

    # -- incidents -------------------------------------------------------------------
    def takedown(self, ref: str, *, actor: str, reason: str, fallback: str | None = None) -> dict[str, Any]:
        """Kill switch: servers stop answering with `ref` (503, or `fallback` if given)."""
        check(bool(reason and reason.strip()), "takedown needs --reason: say why, for the audit log")
        vid = self.version(ref)["id"]
        fid = self.version(fallback)["id"] if fallback else None
        check(fid != vid, "the fallback must be a different version from the one taken down")
        with self.transaction() as conn:
            conn.execute(takedowns.delete().where(takedowns.c.version_id == vid))
            conn.execute(takedowns.insert().values(version_id=vid, fallback_id=fid, reason=reason, created=time.time()))
            gen = self._bump(conn, actor, "takedown", vid, reason, fallback=fid)
        return {"version": vid, "fallback": fid, "generation": gen}

    def restore(self, ref: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Undo a takedown."""
        check(bool(reason and reason.strip()), "restore needs --reason: say why, for the audit log")
        vid = self.version(ref)["id"]
        with self.transaction() as conn:
            if conn.execute(takedowns.delete().where(takedowns.c.version_id == vid)).rowcount == 0:
                raise BadInput(f"version {vid} is not taken down")
            gen = self._bump(conn, actor, "restore", vid, reason)
        return {"version": vid, "generation": gen}

    def suppress(
        self, label: str, *, actor: str, reason: str, alias: str = ALL_ALIASES, mode: str = "abstain"
    ) -> dict[str, Any]:
        """Never output `label` (on `alias`, or everywhere): abstain or renormalise."""
        check(bool(reason and reason.strip()), "suppress needs --reason: say why, for the audit log")
        check_choice("suppression mode", mode, SUPPRESS_MODES)
        with self.transaction() as conn:
            conn.execute(suppressions.delete().where((suppressions.c.label == label) & (suppressions.c.alias == alias)))
            conn.execute(
                suppressions.insert().values(label=label, alias=alias, mode=mode, reason=reason, created=time.time())
            )
            gen = self._bump(conn, actor, "suppress", label, reason, alias=alias, mode=mode)
        return {"label": label, "alias": alias, "mode": mode, "generation": gen}

    def unsuppress(self, label: str, *, actor: str, reason: str, alias: str = ALL_ALIASES) -> dict[str, Any]:
        check(bool(reason and reason.strip()), "unsuppress needs --reason: say why, for the audit log")
        with self.transaction() as conn:
            q = suppressions.delete().where((suppressions.c.label == label) & (suppressions.c.alias == alias))
            if conn.execute(q).rowcount == 0:
                raise BadInput(f"label {label!r} is not suppressed on {alias!r}")
            gen = self._bump(conn, actor, "unsuppress", label, reason, alias=alias)
        return {"label": label, "alias": alias, "generation": gen}

    # -- review policy -----------------------------------------------------------------
    def set_policy(self, ref: str, policy: dict[str, Any], *, actor: str, reason: str = "") -> dict[str, Any]:
        """Set the review policy of a version: answers below the threshold need review.

        `policy` holds `threshold` (in (0, 1), or None for no review threshold),
        optional `per_class` thresholds {label: t} (t in [0, 1), or None for
        "always review"; a class not listed uses `threshold`), and where it
        came from (`method`, `target_accuracy`, `delta`, `source`). It replaces
        the version's previous policy, and running servers apply it within
        their next registry poll, like a suppression.

        >>> reg.set_policy("mlp-digits", {"threshold": 0.9}, actor="ana")["policy"]["threshold"]  # doctest: +SKIP
        0.9
        """
        row = self.version(ref)
        clean = clean_policy(policy, [str(c) for c in row["info"]["classes"]])
        vid = row["id"]
        with self.transaction() as conn:
            conn.execute(policies.delete().where(policies.c.version_id == vid))
            conn.execute(
                policies.insert().values(
                    version_id=vid,
                    policy=json.dumps(clean, sort_keys=True),
                    actor=actor,
                    reason=reason,
                    created=time.time(),
                )
            )
            gen = self._bump(conn, actor, "policy", vid, reason, **clean)
        return {"version": vid, "policy": self.policy(vid), "generation": gen}

    def policy(self, ref: str) -> dict[str, Any]:
        """The review policy of a version: the one set with `set_policy`, else
        the one registered in its info, else {}. A set policy also says who set
        it, when and why (`set_by`, `set_at`, `reason`).

        >>> Registry("sqlite://").policy("nope")
        Traceback (most recent call last):
        ...
        datamoat.errors.NotFound: unknown registry version 'nope': `datamoat registry list` shows them
        """
        row = self.version(ref)
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(policies).where(policies.c.version_id == row["id"])).first()
        if r is not None:
            return {**json.loads(r.policy), "set_by": r.actor, "set_at": r.created, "reason": r.reason}
        return dict(row["info"].get("policy") or {})

    @staticmethod
    def policy_of(snapshot: dict[str, Any], version_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """`policy` of a version as of a `snapshot` (servers and bundles read it so)."""
        return dict(snapshot.get("policies", {}).get(version_id) or info.get("policy") or {})

    def verify_audit(self) -> dict[str, Any]:
        """Recompute the audit log's hash chain (see `verify_chain`).

        >>> reg = Registry("sqlite://")
        >>> reg.create_token("admin", "ops", actor="setup")[:9], reg.verify_audit()["ok"]
        ('dm_admin_', True)
        """
        with self.engine.connect() as conn:
            return verify_chain(conn, audit, AUDIT_FIELDS)

    def audit_log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit).order_by(audit.c.seq)).mappings().all()
        return [{**r, "details": json.loads(r["details"])} for r in rows]

    # -- what servers apply ------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole control state, read in one transaction."""
        with self.engine.connect() as conn:
            gen = conn.execute(sa.select(state.c.value).where(state.c.key == "generation")).scalar_one()
            al = {r.alias: r.version_id for r in conn.execute(sa.select(aliases))}
            td = {
                r.version_id: {"fallback": r.fallback_id, "reason": r.reason}
                for r in conn.execute(sa.select(takedowns))
            }
            sup = [
                {"label": r.label, "alias": r.alias, "mode": r.mode, "reason": r.reason}
                for r in conn.execute(sa.select(suppressions))
            ]
            pol = {r.version_id: json.loads(r.policy) for r in conn.execute(sa.select(policies))}
            out = {"generation": gen, "aliases": al, "takedowns": td, "suppressions": sup, "policies": pol}
            out["releases"] = self.releases_in(conn)  # canaries and shadows (`ReleaseStore`)
        return out

    @staticmethod
    def serving_target(snapshot: dict[str, Any], alias: str) -> tuple[str | None, str]:
        """(version to serve for `alias`, why). None means answer 503.

        A taken-down version is replaced by its fallback, following a chain of
        fallbacks, and never served itself.
        """
        vid = snapshot["aliases"].get(alias)
        if vid is None:
            return None, f"alias {alias!r} points at no version"
        seen: set[str] = set()
        why = "alias"
        while vid in snapshot["takedowns"]:
            if vid in seen:
                return None, "every fallback is taken down"
            seen.add(vid)
            nxt = snapshot["takedowns"][vid]["fallback"]
            if nxt is None:
                return None, f"version {vid} is taken down: {snapshot['takedowns'][vid]['reason']}"
            vid, why = nxt, f"fallback for taken-down {vid}"
        return vid, why

    @staticmethod
    def suppressed_for(snapshot: dict[str, Any], alias: str) -> dict[str, str]:
        """label -> mode for `alias` (an alias-specific entry wins over '*')."""
        out = {s["label"]: s["mode"] for s in snapshot["suppressions"] if s["alias"] == ALL_ALIASES}
        out.update({s["label"]: s["mode"] for s in snapshot["suppressions"] if s["alias"] == alias})
        return out
