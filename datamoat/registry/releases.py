"""Canary and shadow releases of a candidate version beside an alias's version. Mixed into
`Registry`; the ``reg_releases`` table is written only here.

- A **canary** answers `percent` of the alias's requests, chosen by a stable hash of the request's
  input or of the client (`route_key`), so the same input or client always lands on the same side.
- A **shadow** runs on every request of the alias, off the request path; its answers are logged,
  never returned.

Each alias has at most one of each. Starting, ending and the automatic rules' actions are control
changes like a promotion: one transaction, audited, a new generation that servers apply and
acknowledge. A taken-down candidate is never run (its requests go back to the alias's version), and
the alias's suppressions apply to every answer a candidate gives, returned or logged.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput, NotFound
from datamoat.registry.tables import ALL_ALIASES, aliases, releases

if TYPE_CHECKING:  # importing datamoat.evaluate loads torch: the registry stays light
    from datamoat.evaluate.compare import ReleaseRules

__all__ = ["ReleaseStore", "RELEASE_KINDS", "ROUTE_KEYS"]

RELEASE_KINDS = ("canary", "shadow")
ROUTE_KEYS = ("request", "client")


class ReleaseStore:
    """Canary and shadow releases by alias."""

    engine: sa.Engine

    if TYPE_CHECKING:  # provided by Registry

        def transaction(self, lock: int = 1) -> AbstractContextManager[sa.Connection]: ...
        def version(self, ref: str) -> dict[str, Any]: ...
        def audit_event(
            self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any
        ) -> int: ...

    def start_release(
        self,
        ref: str,
        alias: str,
        kind: str,
        *,
        actor: str,
        percent: float = 100.0,
        route_key: str = "request",
        rules: ReleaseRules | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Release version `ref` on `alias` as a canary (`percent` of requests) or a shadow; replaces
        the alias's earlier release of that kind. `rules`: when to promote or roll back by themselves.

        >>> reg.start_release("v2", "production", "canary", percent=10, actor="ana")["percent"]  # doctest: +SKIP
        10.0
        """
        check_choice("release kind", kind, RELEASE_KINDS)
        check_choice("canary route key", route_key, ROUTE_KEYS)
        check(alias != ALL_ALIASES and 0 < len(alias) <= 100, f"invalid alias {alias!r}")
        if kind == "canary":
            check(0 < percent < 100, f"--canary takes a percentage in (0, 100), got {percent:g}: 100 is a promotion")
        else:
            percent = 100.0
        clean = rules.to_dict() if rules is not None and rules.enabled else {}
        vid = self.version(ref)["id"]
        row = {
            "version_id": vid,
            "percent": float(percent),
            "route_key": route_key,
            "rules": json.dumps(clean, sort_keys=True),
            "actor": actor,
            "reason": reason,
            "created": time.time(),
        }
        with self.transaction() as conn:
            current = conn.execute(sa.select(aliases.c.version_id).where(aliases.c.alias == alias)).scalar()
            if current is None:
                raise NotFound(f"alias {alias!r} points at no version: promote one before a {kind} beside it")
            if current == vid:
                raise BadInput(f"{alias!r} already serves {vid}: a {kind} needs a different candidate")
            where = (releases.c.alias == alias) & (releases.c.kind == kind)
            if conn.execute(releases.update().where(where).values(**row)).rowcount == 0:
                conn.execute(releases.insert().values(alias=alias, kind=kind, **row))
            details = {"version": vid, "percent": row["percent"], "route_key": route_key, "rules": clean}
            gen = self.audit_event(conn, actor, kind, alias, reason, **details)
        return {"alias": alias, "kind": kind, **details, "production": current, "generation": gen}

    def end_release(
        self, alias: str, kind: str, *, actor: str, reason: str = "", outcome: str = "ended"
    ) -> dict[str, Any]:
        """End `alias`'s canary or shadow: its traffic goes back to the alias's version. `outcome`
        (ended, rolled_back, promoted, held) is audited."""
        check_choice("release kind", kind, RELEASE_KINDS)
        with self.transaction() as conn:
            gen, vid = self.end_release_in(conn, alias, kind, actor, reason, outcome)
        if vid is None:
            raise BadInput(f"alias {alias!r} has no {kind}: `datamoat release list` shows releases")
        return {"alias": alias, "kind": kind, "version": vid, "outcome": outcome, "generation": gen}

    def hold_release(self, alias: str, kind: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Turn a release's automatic rules off and leave it running for a person to decide (audited)."""
        where = (releases.c.alias == alias) & (releases.c.kind == kind) & (releases.c.rules != "{}")
        with self.transaction() as conn:
            vid = conn.execute(sa.select(releases.c.version_id).where(where)).scalar()
            if vid is None:
                raise BadInput(f"alias {alias!r} has no {kind} with rules to hold")
            conn.execute(releases.update().where(where).values(rules="{}"))
            gen = self.audit_event(conn, actor, f"{kind}_hold", alias, reason, version=vid)
        return {"alias": alias, "kind": kind, "version": vid, "outcome": "held", "generation": gen}

    def end_release_in(
        self, conn: sa.Connection, alias: str, kind: str, actor: str, reason: str, outcome: str
    ) -> tuple[int | None, str | None]:
        """End a release inside the caller's transaction: (generation, the version), or (None, None)
        when there was none."""
        where = (releases.c.alias == alias) & (releases.c.kind == kind)
        vid = conn.execute(sa.select(releases.c.version_id).where(where)).scalar()
        if vid is None:
            return None, None
        conn.execute(releases.delete().where(where))
        return self.audit_event(conn, actor, f"{kind}_end", alias, reason, version=vid, outcome=outcome), vid

    def retire_releases(self, conn: sa.Connection, alias: str, version_id: str, actor: str) -> None:
        """A release of the version an alias now serves has nothing left to compare: end it
        (called by promote and rollback in their transaction)."""
        for kind in RELEASE_KINDS:
            where = (releases.c.alias == alias) & (releases.c.kind == kind) & (releases.c.version_id == version_id)
            if conn.execute(sa.select(releases.c.alias).where(where)).first() is not None:
                self.end_release_in(conn, alias, kind, actor, "the alias now serves this version", "promoted")

    def releases(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Running releases, oldest first (of one alias if given)."""
        q = sa.select(releases).order_by(releases.c.created)
        if alias is not None:
            q = q.where(releases.c.alias == alias)
        with self.engine.connect() as conn:
            return [{**r, "rules": json.loads(r["rules"])} for r in conn.execute(q).mappings()]

    @staticmethod
    def releases_in(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        """{alias: {kind: release}} for the control snapshot servers apply."""
        out: dict[str, dict[str, Any]] = {}
        for r in conn.execute(sa.select(releases)).mappings():
            out.setdefault(r["alias"], {})[r["kind"]] = {
                "version": r["version_id"],
                "percent": r["percent"],
                "route_key": r["route_key"],
                "rules": json.loads(r["rules"]),
            }
        return out
