"""The fleet's state, in the registry's database: devices, bundles, rollouts.

Tables are prefixed ``edge_`` and live beside the registry's, so a control
server needs only the registry URL. Device tokens are stored as sha256
hashes, like registry tokens, in a table of their own (a device token is
not a registry role: it grants one device its own assignment and nothing
else). Every rollout change and every device report lands in the
append-only `edge_events` log, which is also the fleet's timeline.

Low-confidence samples uploaded by devices (`record_uploads`) are never
training data by themselves: each becomes a row of the prediction log
(``serve_predictions``, server ``device:<id>``) and an open item of the
review queue (``serve_review``, the model's answer only as a suggestion),
so it reaches the feedback quarantine only when a person labels it on
/review (`datamoat.serve.logstore.ReviewQueue.decide`), as a trusted
reviewer's label that the gate checks like any other. ``edge_uploads``
records who sent what, for deduplication and the per-device rate limit.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from datamoat.configs import check
from datamoat.edge.bundle import peek_manifest
from datamoat.edge.controldoc import sign_answer
from datamoat.edge.rollout import FAILED, abort_verdict, assign, baseline_for_next, selected
from datamoat.edge.uploads import RateLimited, UploadRefused, parse_upload
from datamoat.errors import BadInput, NotFound
from datamoat.registry import (
    AuthError,
    Registry,
    _hash_token,
    add_chain_column,
    append_chained,
    append_only_ddl,
    verify_chain,
)
from datamoat.serve.logstore import log_rows, open_reviews, review_rows
from datamoat.serve.logstore import predictions as serve_predictions
from datamoat.serve.logstore import review as serve_review

__all__ = ["Fleet", "OUTCOMES", "RateLimited", "UploadRefused"]

BUNDLE_CACHE = 4  # published bundles kept in memory, newest used last

OUTCOMES = ("installed", *FAILED)  # device events that report on a rollout
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

meta = sa.MetaData()
devices = sa.Table(
    "edge_devices",
    meta,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("device_group", sa.String(100), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float),
    sa.Column("status", sa.Text, nullable=False),  # JSON: the last heartbeat
    sa.Column("last_event", sa.Integer, nullable=False),  # highest device event number stored
)
bundles = sa.Table(
    "edge_bundles",
    meta,
    sa.Column("sha", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),  # as the manifest claims; devices check the signed one
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
rollouts = sa.Table(
    "edge_rollouts",
    meta,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(120), nullable=False, unique=True),
    sa.Column("device_group", sa.String(100), nullable=False),
    sa.Column("bundle_sha", sa.String(64), nullable=False),
    sa.Column("baseline_sha", sa.String(64)),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("abort_percent", sa.Float),
    sa.Column("allow_downgrade", sa.Boolean, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active | aborted | superseded
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)
reports = sa.Table(
    "edge_reports",
    meta,
    sa.Column("device_id", sa.String(100), primary_key=True),
    sa.Column("rollout_id", sa.String(120), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)
events = sa.Table(
    "edge_events",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("device_id", sa.String(100), nullable=False),  # "" for operator actions
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("rollout_id", sa.String(120)),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("chain", sa.String(64)),  # the hash chain (datamoat.registry.append_chained)
)
EVENT_FIELDS = ("ts", "device_id", "kind", "rollout_id", "detail")
EVENTS_LOCK = 2  # Registry.transaction's lock for writers of edge_events: one chain, no forks


uploads = sa.Table(
    "edge_uploads",
    meta,
    sa.Column("prediction_id", sa.String(36), primary_key=True),  # the device's, also the review item's id
    sa.Column("device_id", sa.String(100), nullable=False),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),  # when the device answered
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # pixel bytes
    sa.Index("edge_uploads_by_device", "device_id", "received"),
)


class Fleet:
    """Devices, published bundles and rollouts, over a `Registry`'s database.

    >>> fleet = Fleet(Registry("sqlite://"))
    >>> token = fleet.enroll("cam-01", "lab", actor="ops")
    >>> fleet.authenticate(token, "cam-01")["device_group"]
    'lab'
    """

    def __init__(self, registry: Registry, control_key: Any = None):
        # control_key: the Ed25519 private key that signs every answer to a device (see
        # datamoat.edge.controldoc); None answers unsigned, which devices refuse unless told otherwise.
        self.registry, self.engine, self.control_key = registry, registry.engine, control_key
        for attempt in range(5):  # processes starting together race to create tables
            try:
                with self.engine.begin() as conn:
                    meta.create_all(conn)
                    serve_predictions.metadata.create_all(conn)  # uploads become log rows and review items
                    add_chain_column(conn, events)
                    for stmt in append_only_ddl(self.engine.dialect.name, events.name):
                        conn.exec_driver_sql(stmt)
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blobs_lock = threading.Lock()

    def _event(self, conn: sa.Connection, device: str, kind: str, rollout: str | None = None, /, **detail: Any) -> None:
        # Callers hold self._tx(): the chain's previous link cannot change under us.
        row = {
            "ts": time.time(),
            "device_id": device,
            "kind": kind,
            "rollout_id": rollout,
            "detail": json.dumps(detail, sort_keys=True, default=str),
        }
        append_chained(conn, events, row, EVENT_FIELDS)

    def _tx(self) -> Any:
        """A serialised write transaction for everything that appends to edge_events."""
        return self.registry.transaction(EVENTS_LOCK)

    def verify_events(self) -> dict[str, Any]:
        """Recompute edge_events' hash chain (see `datamoat.registry.verify_chain`)."""
        with self.engine.connect() as conn:
            return verify_chain(conn, events, EVENT_FIELDS)

    # -- devices -------------------------------------------------------------------------
    def enroll(self, device_id: str, group: str, *, actor: str) -> str:
        """Register a device (or rotate its token); returns the token, shown once."""
        check(bool(_ID.match(device_id)), f"invalid device id {device_id!r}: use letters, digits, '.', '_', '-'")
        check(bool(_ID.match(group)), f"invalid group {group!r}: use letters, digits, '.', '_', '-'")
        token = f"dm_device_{secrets.token_urlsafe(32)}"
        with self._tx() as conn:
            conn.execute(devices.delete().where(devices.c.id == device_id))
            conn.execute(
                devices.insert().values(
                    id=device_id,
                    token_hash=_hash_token(token),
                    device_group=group,
                    created=time.time(),
                    status="{}",
                    last_event=0,
                )
            )
            self._event(conn, "", "enroll", device=device_id, group=group, actor=actor)
        return token

    def authenticate(self, token: str | None, device_id: str | None = None) -> dict[str, Any]:
        """The token's device row (if given, it must be `device_id`'s): 401 unknown, 403 another device's."""
        if not token:
            raise AuthError("a device token is required: pass it as 'Authorization: Bearer <token>'")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(devices).where(devices.c.token_hash == _hash_token(token))).mappings().first()
        if row is None:
            raise AuthError("unknown device token: enroll the device with `datamoat fleet enroll`")
        if device_id is not None and row["id"] != device_id:
            err = AuthError(f"this token belongs to device {row['id']!r}, not {device_id!r}")
            err.http_status = 403
            raise err
        return dict(row)

    def devices(self, group: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(devices).order_by(devices.c.id)
        if group:
            q = q.where(devices.c.device_group == group)
        with self.engine.connect() as conn:
            return [{**r, "status": json.loads(r["status"])} for r in conn.execute(q).mappings()]

    # -- bundles ---------------------------------------------------------------------------
    def next_sequence(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(bundles.c.seq))).scalar() or 0) + 1

    def publish(self, data: bytes, *, actor: str, sequence: int | None = None, version_id: str | None = None) -> dict:
        """Make a bundle file downloadable by devices; returns its info (idempotent).

        The control server does not verify signatures (devices do, against
        their own trust list); it only reads the manifest for listings.
        """
        if sequence is None or version_id is None:
            m = peek_manifest(data)
            sequence, version_id = m["sequence"], m["version_id"]
        sha = hashlib.sha256(data).hexdigest()
        with self._tx() as conn:
            if not conn.execute(sa.select(bundles.c.sha).where(bundles.c.sha == sha)).first():
                conn.execute(
                    bundles.insert().values(
                        sha=sha,
                        seq=int(sequence),
                        version_id=str(version_id),
                        size=len(data),
                        created=time.time(),
                        data=data,
                    )
                )
                self._event(conn, "", "publish", sha=sha, sequence=sequence, version=version_id, actor=actor)
        return self.bundle(sha)

    def publish_version(self, ref: str, key: Any, *, actor: str, config: Any = None) -> dict:
        """Build, sign and publish a bundle of registry version `ref` with the next sequence number."""
        from datamoat.edge.bundle import build_bundle

        return self.publish(build_bundle(self.registry, ref, key, self.next_sequence(), config), actor=actor)

    def bundles(self) -> list[dict[str, Any]]:
        cols = [c for c in bundles.c if c.name != "data"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(*cols).order_by(bundles.c.created)).mappings()]

    def bundle(self, ref: str) -> dict[str, Any]:
        """A published bundle by sha (or unique prefix), without its bytes."""
        rows = [b for b in self.bundles() if b["sha"].startswith(ref)] if len(ref) >= 6 else []
        if len(rows) != 1:
            raise NotFound(f"no single published bundle matches {ref!r}: `datamoat fleet status --json` lists them")
        return rows[0]

    def latest_bundle(self, version_id: str) -> dict[str, Any] | None:
        rows = [b for b in self.bundles() if b["version_id"] == version_id]
        return max(rows, key=lambda b: (b["seq"], b["created"])) if rows else None

    def bundle_bytes(self, sha: str) -> bytes:
        """A published bundle's bytes. The few newest are cached (immutable by
        content address), so a rollout's downloads do not each hit the database,
        while a fleet with many versions holds no more than BUNDLE_CACHE of them."""
        with self._blobs_lock:
            if sha in self._blobs:
                self._blobs.move_to_end(sha)
                return self._blobs[sha]
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(bundles.c.data).where(bundles.c.sha == sha)).scalar_one_or_none()
        if data is None:
            raise NotFound(f"bundle {sha[:12]} is not published")
        with self._blobs_lock:
            self._blobs[sha] = bytes(data)
            while len(self._blobs) > BUNDLE_CACHE:
                self._blobs.popitem(last=False)
            return self._blobs[sha]

    # -- rollouts ----------------------------------------------------------------------------
    def rollouts(self, group: str | None = None, conn: sa.Connection | None = None) -> list[dict[str, Any]]:
        """The rollouts, oldest first; inside `conn`'s transaction when given."""
        q = sa.select(rollouts).order_by(rollouts.c.n)
        if group:
            q = q.where(rollouts.c.device_group == group)
        if conn is not None:
            return [dict(r) for r in conn.execute(q).mappings()]
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def current_rollout(self, group: str, conn: sa.Connection | None = None) -> dict[str, Any] | None:
        rows = [r for r in self.rollouts(group, conn) if r["state"] != "superseded"]
        return rows[-1] if rows else None

    def _count(self, conn: sa.Connection, rollout_id: str, statuses: tuple[str, ...]) -> int:
        q = sa.select(sa.func.count()).where((reports.c.rollout_id == rollout_id) & reports.c.status.in_(statuses))
        return int(conn.execute(q).scalar_one())

    def start_rollout(
        self,
        bundle_sha: str,
        group: str,
        percent: float,
        *,
        actor: str,
        abort_percent: float | None = None,
        allow_downgrade: bool = False,
    ) -> dict[str, Any]:
        """Send a published bundle to `percent` of `group`; the same bundle again raises the percent."""
        check(0 < percent <= 100, f"percent must be in (0, 100], got {percent:g}")
        check(
            abort_percent is None or 0 < abort_percent <= 100, f"abort percent must be in (0, 100], got {abort_percent}"
        )
        sha = self.bundle(bundle_sha)["sha"]
        now = time.time()
        with self._tx() as conn:  # read and write as one: two operators cannot interleave
            cur = self.current_rollout(group, conn)
            if cur and cur["bundle_sha"] == sha and cur["state"] == "active":
                if percent < cur["percent"]:
                    raise BadInput(
                        f"rollout {cur['id']} is at {cur['percent']:g}%; percent only grows: abort it with `datamoat fleet abort`"
                    )
                vals = {
                    "percent": percent,
                    "updated": now,
                    "allow_downgrade": cur["allow_downgrade"] or allow_downgrade,
                }
                if abort_percent is not None:
                    vals["abort_percent"] = abort_percent
                conn.execute(rollouts.update().where(rollouts.c.id == cur["id"]).values(**vals))
                self._event(
                    conn,
                    "",
                    "rollout-percent",
                    cur["id"],
                    percent=percent,
                    actor=actor,
                    allow_downgrade=vals["allow_downgrade"],
                )
                rid = cur["id"]
            else:
                installed = self._count(conn, cur["id"], ("installed",)) if cur else 0
                baseline = baseline_for_next(cur, installed)
                if cur and cur["state"] == "active":
                    conn.execute(
                        rollouts.update().where(rollouts.c.id == cur["id"]).values(state="superseded", updated=now)
                    )
                n = int(conn.execute(sa.select(sa.func.count()).select_from(rollouts)).scalar_one()) + 1
                rid = f"{group}-{n}"
                conn.execute(
                    rollouts.insert().values(
                        id=rid,
                        device_group=group,
                        bundle_sha=sha,
                        baseline_sha=baseline,
                        percent=percent,
                        abort_percent=abort_percent,
                        allow_downgrade=allow_downgrade,
                        state="active",
                        reason="",
                        created=now,
                        updated=now,
                    )
                )
                self._event(
                    conn,
                    "",
                    "rollout-start",
                    rid,
                    bundle=sha,
                    baseline=baseline,
                    percent=percent,
                    abort_percent=abort_percent,
                    allow_downgrade=allow_downgrade,
                    actor=actor,
                )
        return next(r for r in self.rollouts(group) if r["id"] == rid)

    def abort_rollout(self, group: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Stop the group's rollout: every device goes back to the baseline."""
        check(bool(reason.strip()), "abort needs --reason: say why, for the fleet log")
        with self._tx() as conn:
            cur = self.current_rollout(group, conn)
            if cur is None or cur["state"] != "active":
                raise BadInput(f"group {group!r} has no active rollout to abort")
            self._abort(conn, cur["id"], f"aborted by {actor}: {reason}")
        return next(r for r in self.rollouts(group) if r["id"] == cur["id"])

    def _abort(self, conn: sa.Connection, rollout_id: str, reason: str) -> None:
        conn.execute(
            rollouts.update()
            .where(rollouts.c.id == rollout_id)
            .values(state="aborted", reason=reason, updated=time.time())
        )
        self._event(conn, "", "rollout-abort", rollout_id, reason=reason)

    def _check_abort(self, conn: sa.Connection, rollout_id: str) -> None:
        r = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
        if r is None or r["state"] != "active" or r["abort_percent"] is None:
            return
        ids = conn.execute(sa.select(devices.c.id).where(devices.c.device_group == r["device_group"])).scalars()
        assigned = sum(selected(d, r["id"], r["percent"]) for d in ids)
        why = abort_verdict(self._count(conn, rollout_id, FAILED), assigned, r["abort_percent"])
        if why:
            self._abort(conn, rollout_id, why)

    # -- what devices see --------------------------------------------------------------------
    def assignment(self, device: dict[str, Any]) -> dict[str, Any]:
        """A device's assignment: its bundle, the downgrade allowance, and the policy overlay (signed)."""
        return self._seal(self._assignment(device))

    def _seal(self, answer: dict[str, Any]) -> dict[str, Any]:
        return sign_answer(answer, self.control_key) if self.control_key is not None else answer

    def _assignment(self, device: dict[str, Any]) -> dict[str, Any]:
        group = device["device_group"]
        rollout = self.current_rollout(group)
        a = assign(device["id"], rollout)
        bundle = self.bundle(a["bundle_sha"]) if a["bundle_sha"] else None
        snap = self.registry.snapshot()
        with self.engine.connect() as conn:
            last_event = int(conn.execute(sa.select(sa.func.max(events.c.seq))).scalar_one() or 0)
        note = None
        if bundle and bundle["version_id"] in snap["takedowns"]:  # send the takedown's fallback, if bundled
            target, note = Registry.serving_target({**snap, "aliases": {"_": bundle["version_id"]}}, "_")
            fallback = self.latest_bundle(target) if target else None
            if fallback:
                bundle, a["allow_downgrade"], a["rollout_id"] = fallback, True, None
        return {
            "device_id": device["id"],
            "group": group,
            "allow_downgrade": a["allow_downgrade"],
            "seq": [snap["generation"], last_event],  # both only grow: a device refuses an older answer
            "bundle": None
            if bundle is None
            else {
                "sha256": bundle["sha"],
                "sequence": bundle["seq"],
                "version_id": bundle["version_id"],
                "size": bundle["size"],
                "url": f"/v1/edge/bundles/{bundle['sha']}",
            },
            "rollout": None
            if rollout is None
            else {
                "id": rollout["id"],
                "state": rollout["state"],
                "percent": rollout["percent"],
                "selected": a["selected"],
            },
            "rollout_id": a["rollout_id"],
            "note": note,
            "policy": {
                "generation": snap["generation"],
                "suppressed": Registry.suppressed_for(snap, group),
                "takedowns": snap["takedowns"],
            },
        }

    def sync(self, device: dict[str, Any], heartbeat: dict[str, Any]) -> dict[str, Any]:
        """Record a heartbeat (status, new events, install reports), check aborts, return the assignment."""
        evs = [e for e in heartbeat.get("events", []) if int(e.get("n", 0)) > device["last_event"]]
        status = {k: v for k, v in heartbeat.items() if k != "events"}
        last = max([device["last_event"], *(int(e["n"]) for e in evs)])
        touched, mine = set(), {r["id"]: r for r in self.rollouts(device["device_group"])}
        with self._tx() as conn:
            conn.execute(
                devices.update()
                .where(devices.c.id == device["id"])
                .values(last_seen=time.time(), status=json.dumps(status, default=str), last_event=last)
            )
            for e in evs:
                rid = e.get("rollout_id")
                self._event(
                    conn,
                    device["id"],
                    str(e.get("kind", "?"))[:32],
                    rid,
                    **{k: v for k, v in e.items() if k not in ("kind", "rollout_id")},
                )
                r = mine.get(rid)  # a device reports only on rollouts it is in: it cannot abort others'
                if r is not None and e.get("kind") in OUTCOMES and selected(device["id"], rid, r["percent"]):
                    conn.execute(
                        reports.delete().where((reports.c.device_id == device["id"]) & (reports.c.rollout_id == rid))
                    )
                    conn.execute(
                        reports.insert().values(
                            device_id=device["id"],
                            rollout_id=rid,
                            status=e["kind"],
                            reason=str(e.get("reason") or ""),
                            ts=time.time(),
                        )
                    )
                    touched.add(rid)
            for rid in touched:
                self._check_abort(conn, rid)
        return self._seal({**self._assignment({**device, "last_event": last}), "acked_event": last})

    # -- uploads --------------------------------------------------------------------------------
    def record_uploads(
        self, device: dict[str, Any], items: list[Any], *, max_per_hour: int, max_open: int = 10_000
    ) -> dict[str, Any]:
        """Store a device's low-confidence samples as review-queue items (see the module docstring).

        All or nothing per item check: an invalid item raises `UploadRefused`
        naming it, and nothing of the batch is stored. Items already sent by
        this device are acknowledged again (an ack lost on the way). Beyond
        `max_per_hour` new items an hour, or beyond `max_open` open items in
        the whole review queue (the bound the servers keep too), the rest are
        left unacknowledged (``rate_limited``), or `RateLimited` (429) when
        none fit: the device keeps them and sends them again later.
        Returns {"acked": prediction ids, "stored": n, "duplicates": n, "rate_limited": bool}.

        >>> fleet.record_uploads(fleet.authenticate(token, "cam-01"), [item], max_per_hour=600)  # doctest: +SKIP
        {'acked': ['1b9d...'], 'stored': 1, 'duplicates': 0, 'rate_limited': False}
        """
        now = time.time()
        versions: dict[str, Any] = {}
        parsed = [parse_upload(i, it, versions, self.registry, now) for i, it in enumerate(items)]
        ids = [p["prediction_id"] for p in parsed]
        with self.engine.connect() as conn:
            mine = {
                r.prediction_id: r.device_id
                for r in conn.execute(
                    sa.select(uploads.c.prediction_id, uploads.c.device_id).where(uploads.c.prediction_id.in_(ids))
                )
            }
            logged = set(
                conn.execute(sa.select(serve_predictions.c.id).where(serve_predictions.c.id.in_(ids))).scalars()
            )
            recent = conn.execute(
                sa.select(sa.func.count())
                .select_from(uploads)
                .where((uploads.c.device_id == device["id"]) & (uploads.c.received > now - 3600))
            ).scalar_one()
            n_open = open_reviews(conn)
        new: list[dict[str, Any]] = []
        dup: list[dict[str, Any]] = []
        seen = set()
        for i, p in enumerate(parsed):
            pid = p["prediction_id"]
            if mine.get(pid, device["id"]) != device["id"] or (pid in logged and pid not in mine):
                raise UploadRefused(
                    f"prediction id {pid} is already used by another source: a device uploads only its own answers",
                    i,
                    409,
                )
            (dup if pid in mine or pid in seen else new).append(p)
            seen.add(pid)
        room = max(0, min(max_per_hour - recent, max_open - n_open))
        if new and room == 0:
            if n_open >= max_open:
                raise RateLimited(
                    f"the review queue is full ({n_open} open items, the limit is {max_open}): "
                    "keep the samples and retry later"
                )
            raise RateLimited(
                f"device {device['id']!r} sent {recent} samples in the last hour, its limit is "
                f"{max_per_hour}: keep them and retry later"
            )
        stored = new[:room]
        group = device["device_group"]
        with self._tx() as conn:  # one transaction: each review item has its log row and its upload row
            for p in stored:
                # The cloud's row builders, with the device in the place of a server and its own time.
                state = SimpleNamespace(
                    alias=f"edge:{group}",
                    generation=p["generation"],
                    model=SimpleNamespace(version_id=p["model_version"]),
                )
                answer = {k: p[k] for k in ("prediction_id", "label", "abstained", "top_k")}
                answer.update(needs_review=True, reason=f"from device {device['id']}: {p['reason']}")
                log_row = log_rows(state, f"device:{device['id']}", [answer], [p["input_sha256"]])[0]
                rev = review_rows(state, [answer], p["pixels"][None])[0]
                conn.execute(serve_predictions.insert().values({**log_row, "ts": p["ts"]}))
                # The queue is ordered by when the server received an item, never by the device's clock (L5).
                conn.execute(serve_review.insert().values({**rev, "ts": now, "exact": p["exact"]}))
                conn.execute(
                    uploads.insert().values(
                        prediction_id=p["prediction_id"],
                        device_id=device["id"],
                        received=now,
                        ts=p["ts"],
                        model_version=p["model_version"],
                        size=int(p["pixels"].nbytes),
                    )
                )
            if stored:
                self._event(conn, device["id"], "uploads", None, stored=len(stored), duplicates=len(dup))
        acked = [p["prediction_id"] for p in [*stored, *dup]]
        return {"acked": acked, "stored": len(stored), "duplicates": len(dup), "rate_limited": len(stored) < len(new)}

    def uploads(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Who uploaded which sample, oldest first."""
        q = sa.select(uploads).order_by(uploads.c.received, uploads.c.ts)
        if device_id:
            q = q.where(uploads.c.device_id == device_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- what operators see ------------------------------------------------------------------
    def status(self, group: str | None = None, live_within: float = 30.0) -> list[dict[str, Any]]:
        """Per device: version, last heartbeat, health and rollout state."""
        with self.engine.connect() as conn:
            reps = {(r.device_id, r.rollout_id): r for r in conn.execute(sa.select(reports))}
        out, now = [], time.time()
        for d in self.devices(group):
            st, cur = d["status"], self.current_rollout(d["device_group"])
            a = assign(d["id"], cur)
            rollout_state = None
            if cur is not None:
                rep = reps.get((d["id"], cur["id"]))
                what = (
                    (rep.status + (f" ({rep.reason})" if rep.reason else ""))
                    if rep
                    else (
                        "pending"
                        if a["selected"]
                        else ("back to baseline" if cur["state"] == "aborted" else "not selected")
                    )
                )
                rollout_state = f"{cur['id']} [{cur['state']} {cur['percent']:g}%]: {what}"
            age = None if d["last_seen"] is None else now - d["last_seen"]
            out.append(
                {
                    "device_id": d["id"],
                    "group": d["device_group"],
                    "version": st.get("version_id"),
                    "sequence": st.get("bundle_sequence"),
                    "health": st.get("health", "never seen"),
                    "last_heartbeat_s": age,
                    "online": age is not None and age <= live_within,
                    "rollout": rollout_state,
                    "last_error": st.get("last_error"),
                    "uploads": st.get("uploads"),
                }
            )
        return out

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(events).where(events.c.seq > since).order_by(events.c.seq)).mappings()
            return [{**r, "detail": json.loads(r["detail"])} for r in rows]
