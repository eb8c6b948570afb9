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
/review (`datamoat.feedback.review.ReviewQueue.decide`), as a trusted
reviewer's label that the gate checks like any other. ``edge_uploads``
records who sent what, for deduplication and the per-device rate limit.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa

from datamoat.configs import check
from datamoat.edge.controldoc import sign_answer
from datamoat.edge.drift import record_device_windows
from datamoat.edge.events import ensure_events
from datamoat.edge.publish import BundleShelf
from datamoat.edge.publish import meta as bundles_meta
from datamoat.edge.rollout import FAILED, abort_verdict, assign, baseline_for_next, selected
from datamoat.edge.uploads import RateLimited, UploadRefused, parse_upload, record_uploads, upload_log
from datamoat.edge.uploads import meta as uploads_meta
from datamoat.errors import BadInput
from datamoat.registry.core import AuthError, Registry, hash_token
from datamoat.registry.ledger import ensure_ledger
from datamoat.registry.schema import ensure_schema

__all__ = ["Fleet", "OUTCOMES", "RateLimited", "UploadRefused"]


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


class Fleet(BundleShelf):
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
        ensure_ledger(self.engine)  # uploads become log rows and review items
        ensure_schema(self.engine, "edge", meta)
        ensure_events(self.engine)
        ensure_schema(self.engine, "edge_uploads", uploads_meta)
        ensure_schema(self.engine, "edge_bundles", bundles_meta)
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blobs_lock = threading.Lock()

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
                    token_hash=hash_token(token),
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
            row = conn.execute(sa.select(devices).where(devices.c.token_hash == hash_token(token))).mappings().first()
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
            last_event = self.last_event_seq(conn)
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
        record_device_windows(self.registry, device, evs)  # per device and site, in the registry's windows
        return self._seal({**self._assignment({**device, "last_event": last}), "acked_event": last})

    # -- uploads --------------------------------------------------------------------------------
    def record_uploads(
        self, device: dict[str, Any], items: list[Any], *, max_per_hour: int, max_open: int = 10_000
    ) -> dict[str, Any]:
        """Store a device's low-confidence samples as review-queue items (`datamoat.edge.uploads.record_uploads`).

        >>> fleet.record_uploads(fleet.authenticate(token, "cam-01"), [item], max_per_hour=600)  # doctest: +SKIP
        {'acked': ['1b9d...'], 'stored': 1, 'duplicates': 0, 'rate_limited': False}
        """
        now = time.time()
        versions: dict[str, Any] = {}
        parsed = [parse_upload(i, it, versions, self.registry, now) for i, it in enumerate(items)]
        with self._tx() as conn:  # serialised with the event log: one transaction per batch
            out = record_uploads(conn, device, parsed, max_per_hour=max_per_hour, max_open=max_open)
            if out["stored"]:
                self._event(conn, device["id"], "uploads", None, stored=out["stored"], duplicates=out["duplicates"])
        return out

    def uploads(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Who uploaded which sample, oldest first."""
        return upload_log(self.engine, device_id)

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
                    "counters": st.get("counters"),
                    "perf": st.get("perf"),  # the device's own latency, memory and model (`edge.perf`)
                }
            )
        return out
