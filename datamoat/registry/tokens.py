"""Access tokens: 256 random bits, shown once, stored as a sha256 hash, named
for the audit log, revocable. `TokenStore` is mixed into `Registry`, whose
serialised, audited transactions it uses.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from datamoat.configs import check, check_choice
from datamoat.errors import BadInput, DatamoatError, NotFound
from datamoat.registry.tables import ROLES, tokens

__all__ = ["AuthError", "TokenStore", "hash_token"]


class AuthError(DatamoatError):
    """A missing, unknown or revoked token (401), or one without the role needed (403)."""

    http_status = 401


def hash_token(token: str) -> str:
    """How a token is stored: 256 random bits need no password stretching, a plain sha256 will do.

    >>> len(hash_token("dm_x"))
    64
    """
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Creating, listing, revoking and checking tokens."""

    engine: sa.Engine

    if TYPE_CHECKING:  # provided by Registry

        def transaction(self, lock: int = 1) -> AbstractContextManager[sa.Connection]: ...

        def _bump(
            self, conn: sa.Connection, actor: str, action: str, target: str, reason: str, **details: Any
        ) -> int: ...

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
                tokens.insert().values(hash=hash_token(token), name=name, role=role, created=time.time(), revoked=False)
            )
            self._bump(conn, actor, "token-create", name, "", role=role)
        return token

    def has_token(self, *roles: str) -> bool:
        """Whether a token of any of `roles` exists (before the first, the CLI acts as the OS user).

        >>> from datamoat.registry import Registry
        >>> Registry("sqlite://").has_token("admin")
        False
        """
        with self.engine.connect() as conn:
            return conn.execute(sa.select(tokens.c.hash).where(tokens.c.role.in_(roles))).first() is not None

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token's name, role, creation time and whether it is revoked (never its hash).

        >>> from datamoat.registry import Registry
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
            row = conn.execute(sa.select(tokens).where(tokens.c.hash == hash_token(token))).first()
        if row is None or row.revoked:
            raise AuthError("unknown or revoked token: create one with `datamoat tokens create`")
        if row.role != role and row.role != "admin":
            err = AuthError(f"token {row.name!r} has role {row.role!r}; this needs {role!r}")
            err.http_status = 403
            raise err
        return row.name
