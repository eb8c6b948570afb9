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
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput, DatamoatError, NotFound
from datamoat.workspace import Workspace, make_dirs, touch_private

__all__ = [
    "Registry",
    "registry_url",
    "ROLES",
    "SUPPRESS_MODES",
    "POLICY_FIELDS",
    "AuthError",
    "add_chain_column",
    "append_chained",
    "append_only_ddl",
    "verify_chain",
]

ROLES = ("predict", "admin", "review", "monitor")  # monitor: /metrics and /v1/model only
SUPPRESS_MODES = ("abstain", "renormalize")
ALL_ALIASES = "*"
# What a review policy may hold: the thresholds serving applies, and where they came from.
POLICY_FIELDS = ("threshold", "per_class", "method", "target_accuracy", "delta", "source")

meta = sa.MetaData()
_WRITE = "datamoat_write"  # execution option: this transaction writes (see Registry.transaction)

versions = sa.Table(
    "reg_versions",
    meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # fp32 | int8
    sa.Column("onnx_sha", sa.String(64), nullable=False),
    sa.Column("info", sa.Text, nullable=False),  # JSON: classes, preprocess, lineage, metrics, policy
)
blobs = sa.Table(
    "reg_blobs",
    meta,
    sa.Column("sha", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
aliases = sa.Table(
    "reg_aliases",
    meta,
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("history", sa.Text, nullable=False),  # JSON list of previous holders, newest last
    sa.Column("updated", sa.Float, nullable=False),
)
takedowns = sa.Table(
    "reg_takedowns",
    meta,
    sa.Column("version_id", sa.String(32), primary_key=True),
    sa.Column("fallback_id", sa.String(32)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
suppressions = sa.Table(
    "reg_suppressions",
    meta,
    sa.Column("label", sa.String(200), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
policies = sa.Table(
    "reg_policies",
    meta,  # a version's info is immutable (it hashes into the id): its policy lives here
    sa.Column("version_id", sa.String(32), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),  # JSON, see `Registry.set_policy`
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
audit = sa.Table(
    "reg_audit",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("chain", sa.String(64)),  # sha256(previous row's chain + this row): see append_chained
)
state = sa.Table(
    "reg_state",
    meta,
    sa.Column("key", sa.String(50), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
servers = sa.Table(
    "reg_servers",
    meta,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("url", sa.String(300), nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("acked_generation", sa.Integer, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)
tokens = sa.Table(
    "reg_tokens",
    meta,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

GENESIS = "0" * 64  # the chain value before a log's first chained row


def append_only_ddl(dialect: str, table: str) -> list[str]:
    """Triggers that make `table` append-only in the database itself, not by convention.

    >>> len(append_only_ddl("sqlite", "reg_audit"))
    2
    """
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            for op in ("UPDATE", "DELETE")
        ]
    if dialect == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$ LANGUAGE plpgsql",
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
        ]
    return []


def add_chain_column(conn: sa.Connection, table: sa.Table) -> None:
    """Give a log created before chaining its `chain` column (its old rows stay unchained)."""
    if "chain" not in {c["name"] for c in sa.inspect(conn).get_columns(table.name)}:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN chain VARCHAR(64)")


def _link(prev: str, row: dict[str, Any], fields: tuple[str, ...]) -> str:
    body = json.dumps([row[f] for f in fields], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def append_chained(conn: sa.Connection, table: sa.Table, row: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Insert `row` into an append-only log with its hash chain: each row's
    `chain` is sha256 of the previous row's chain and this row's `fields`, so
    a row altered or deleted anywhere but the end breaks every later link
    (`verify_chain`). Call inside a serialised `Registry.transaction`."""
    prev = conn.execute(sa.select(table.c.chain).order_by(table.c.seq.desc()).limit(1)).scalar()
    conn.execute(table.insert().values(**row, chain=_link(prev or GENESIS, row, fields)))


def verify_chain(conn: sa.Connection, table: sa.Table, fields: tuple[str, ...]) -> dict[str, Any]:
    """Recompute a log's chain: {ok, rows, unchained, head, first_bad}. `head` is the
    last link: record it elsewhere, and a later verify that ends elsewhere shows
    rows removed from the end too."""
    prev = GENESIS
    out: dict[str, Any] = {"ok": True, "rows": 0, "unchained": 0, "head": None, "first_bad": None}
    for r in conn.execute(sa.select(table).order_by(table.c.seq)).mappings():
        out["rows"] += 1
        if r["chain"] is None:  # written before chaining existed
            out["unchained"] += 1
            continue
        want = _link(prev, dict(r), fields)
        if r["chain"] != want and out["ok"]:
            out.update(ok=False, first_bad=r["seq"])
        prev = r["chain"]
    out["head"] = prev if out["rows"] > out["unchained"] else None
    return out


AUDIT_FIELDS = ("ts", "actor", "action", "target", "reason", "details", "generation")


class AuthError(DatamoatError):
    """A missing, unknown, revoked or under-privileged token."""

    http_status = 401


def registry_url(ws: Workspace | None = None, url: str | None = None) -> str:
    """`url`, else `$DATAMOAT_REGISTRY_URL`, else SQLite beside the workspace catalog."""
    url = url or os.environ.get("DATAMOAT_REGISTRY_URL")
    if url:
        return url
    ws = ws or Workspace.open()
    return f"sqlite:///{(ws.root / 'registry.db').resolve()}"


def _probability(name: str, value: Any, low_ok: bool = False) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (0 <= value < 1 if low_ok else 0 < value < 1)
    check(
        ok,
        f"{name} must be in {'[0' if low_ok else '(0'}, 1), got {value!r}: e.g. 0.9 sends answers "
        "below 90% confidence to review",
    )
    return float(value)


def _clean_policy(policy: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """A validated copy of a review policy for a version with `classes`."""
    check(isinstance(policy, dict), f"a policy is a dict such as {{'threshold': 0.9}}, got {type(policy).__name__}")
    unknown = sorted(set(policy) - set(POLICY_FIELDS))
    check(not unknown, f"unknown policy field(s) {', '.join(unknown)}: allowed are {', '.join(POLICY_FIELDS)}")
    thr = policy.get("threshold")
    out: dict[str, Any] = {"threshold": None if thr is None else _probability("threshold", thr), "per_class": None}
    per = policy.get("per_class")
    if per is not None:
        check(isinstance(per, dict), "per_class must map class names to thresholds, e.g. {'cat': 0.95}")
        bad = sorted(str(k) for k in per if str(k) not in classes)
        check(
            not bad,
            f"per-class threshold(s) for unknown class(es) {', '.join(bad)}: "
            f"the version's classes are {', '.join(classes)}",
        )
        # None: that class always goes to review; 0: that class never does.
        out["per_class"] = {
            str(k): None if v is None else _probability(f"the threshold of class {k!r}", v, True)
            for k, v in per.items()
        }
    for key in ("target_accuracy", "delta"):
        if policy.get(key) is not None:
            out[key] = _probability(key, policy[key])
    for key in ("method", "source"):
        if policy.get(key) is not None:
            check(isinstance(policy[key], str) and len(policy[key]) <= 500, f"{key} must be a string (<= 500 chars)")
            out[key] = policy[key]
    return out


def _hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a plain sha256 is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()


class Registry:
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

        for attempt in range(5):  # processes starting together race to create tables: the loser retries
            try:
                self._create()
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _create(self) -> None:
        with self.engine.begin() as conn:
            meta.create_all(conn)
            add_chain_column(conn, audit)
            for stmt in append_only_ddl(self.engine.dialect.name, audit.name):
                conn.exec_driver_sql(stmt)
            if conn.execute(sa.select(state.c.value).where(state.c.key == "generation")).first() is None:
                conn.execute(state.insert().values(key="generation", value=0))

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
        clean = _clean_policy(policy, [str(c) for c in row["info"]["classes"]])
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
        return {"generation": gen, "aliases": al, "takedowns": td, "suppressions": sup, "policies": pol}

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

    # -- servers and acknowledgements ------------------------------------------------------
    def heartbeat(self, server_id: str, url: str, alias: str, acked_generation: int) -> None:
        with self.transaction() as conn:
            vals = {"url": url, "alias": alias, "acked_generation": acked_generation, "last_seen": time.time()}
            if conn.execute(servers.update().where(servers.c.id == server_id).values(**vals)).rowcount == 0:
                conn.execute(servers.insert().values(id=server_id, **vals))

    def forget_server(self, server_id: str) -> None:
        with self.transaction() as conn:
            conn.execute(servers.delete().where(servers.c.id == server_id))

    def servers(self, live_within: float = 10.0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(servers)).mappings().all()
        now = time.time()
        return [{**r, "live": now - r["last_seen"] <= live_within} for r in rows]

    def wait_for_acks(self, generation: int, timeout: float = 5.0, live_within: float = 10.0) -> dict[str, list[str]]:
        """Block until every live server acknowledged `generation`, or `timeout`.

        Returns {"acked": [...], "missing": [...]}, server ids.
        """
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers(live_within) if s["live"]]
            missing = [s["id"] for s in live if s["acked_generation"] < generation]
            if not missing or time.monotonic() >= deadline:
                return {"acked": [s["id"] for s in live if s["id"] not in missing], "missing": missing}
            time.sleep(0.02)

    # -- tokens --------------------------------------------------------------------------
    def create_token(self, role: str, name: str, *, actor: str) -> str:
        """A new random token; only its hash is stored. Returns the plaintext once.

        A name is a token's identity in the audit log and for the feedback
        gate's trust, so it is never reused, not even after a revocation.
        """
        check_choice("role", role, ROLES)
        check(bool(name.strip()) and len(name) <= 200, f"a token needs a name of 1..200 characters, got {name!r}")
        token = f"dm_{role}_{secrets.token_urlsafe(32)}"
        with self.transaction() as conn:
            if conn.execute(sa.select(tokens.c.name).where(tokens.c.name == name)).first() is not None:
                raise BadInput(f"a token named {name!r} exists or existed: names are identities, choose another")
            conn.execute(
                tokens.insert().values(
                    hash=_hash_token(token), name=name, role=role, created=time.time(), revoked=False
                )
            )
            self._bump(conn, actor, "token-create", name, "", role=role)
        return token

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token's name, role, creation time and whether it is revoked (never its hash).

        >>> Registry("sqlite://").list_tokens()
        []
        """
        q = sa.select(tokens.c.name, tokens.c.role, tokens.c.created, tokens.c.revoked).order_by(tokens.c.created)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def revoke_token(self, name: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Revoke a token by name; servers stop accepting it at their next poll (the generation moves)."""
        check(bool(reason.strip()), "revoking a token needs --reason: say why, for the audit log")
        with self.transaction() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.name == name)).first()
            if row is None:
                raise NotFound(f"no token named {name!r}: `datamoat tokens list` shows them")
            if row.revoked:
                raise BadInput(f"token {name!r} is already revoked")
            conn.execute(tokens.update().where(tokens.c.name == name).values(revoked=True))
            gen = self._bump(conn, actor, "token-revoke", name, reason, role=row.role)
        return {"name": name, "role": row.role, "revoked": True, "generation": gen}

    def check_token(self, token: str | None, role: str) -> str:
        """The token's name if it grants `role` (admin grants everything), else AuthError."""
        if not token:
            raise AuthError(f"a {role} token is required: pass it as 'Authorization: Bearer <token>'")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.hash == _hash_token(token))).first()
        if row is None or row.revoked:
            raise AuthError("unknown or revoked token: create one with `datamoat tokens create`")
        if row.role != role and row.role != "admin":
            err = AuthError(f"token {row.name!r} has role {row.role!r}; this needs {role!r}")
            err.http_status = 403
            raise err
        return row.name
