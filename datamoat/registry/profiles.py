"""Each version's reference profile (`datamoat.evaluate.drift`): what its validation split looked
like through the served model, recorded when it is promoted (`datamoat.registry.register.
profile_version` makes it), so servers and devices can test live traffic against it; and the
results of those tests, window by window. Mixed into `Registry`; the ``reg_profiles`` and
``reg_drift_windows`` tables are written only here.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from datamoat.errors import BadInput
from datamoat.registry.schema import begin_write
from datamoat.registry.tables import drift_windows, profiles

__all__ = ["ProfileStore"]


class ProfileStore:
    """Reference profiles by version."""

    engine: sa.Engine

    if TYPE_CHECKING:  # provided by Registry

        def transaction(self, lock: int = 1) -> AbstractContextManager[sa.Connection]: ...
        def version(self, ref: str) -> dict[str, Any]: ...
        def audit_event(
            self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any
        ) -> int: ...

    def set_profile(self, ref: str, profile: dict[str, Any], *, actor: str) -> str:
        """Record (or replace) a version's reference profile; audited. Returns the version id."""
        vid = self.version(ref)["id"]
        if profile.get("version_id") != vid:
            raise BadInput(f"the profile was made for version {profile.get('version_id')}, not {vid}")
        row = {"dataset_id": profile["dataset_id"], "profile": json.dumps(profile), "created": time.time()}
        with self.transaction() as conn:
            if conn.execute(profiles.update().where(profiles.c.version_id == vid).values(**row)).rowcount == 0:
                conn.execute(profiles.insert().values(version_id=vid, **row))
            self.audit_event(conn, actor, "profile", vid, "", dataset=profile["dataset_id"], n=profile["n"])
        return vid

    def profile(self, ref: str) -> dict[str, Any] | None:
        """A version's reference profile, or None when none was recorded."""
        vid = self.version(ref)["id"]
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(profiles.c.profile).where(profiles.c.version_id == vid)).scalar()
        return None if text is None else json.loads(text)

    def record_window(self, server_id: str, alias: str, version_id: str, result: dict[str, Any]) -> None:
        """Store one live window's test result (`datamoat.evaluate.drift.check_window`)."""
        keep = ("fired", "p_values", "level", "mmd2", "brightness_shift", "contrast_shift", "class_mix", "estimate")
        row = {
            "ts": time.time(),
            "server_id": server_id,
            "alias": alias,
            "version_id": version_id,
            "n": int(result["n"]),
            "alarm": bool(result["alarm"]),
            "result": json.dumps({k: result[k] for k in keep}),
        }
        with begin_write(self.engine) as conn:  # an append, not a control change: no serialising lock
            conn.execute(drift_windows.insert().values(**row))

    def drift_windows(self, *, version: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Recorded windows, newest first (of one version if given)."""
        q = sa.select(drift_windows).order_by(drift_windows.c.seq.desc()).limit(limit)
        if version is not None:
            q = q.where(drift_windows.c.version_id == self.version(version)["id"])
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [{**{k: v for k, v in r.items() if k != "result"}, **json.loads(r["result"])} for r in rows]
