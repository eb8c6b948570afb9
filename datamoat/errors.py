"""User-facing errors.

Every error a user can cause by passing bad input is a `DatamoatError`: its
message is one line that names what is wrong and how to fix it. The CLI turns
it into exit code 2; the HTTP layer turns it into a 4xx with a JSON body.
"""

from __future__ import annotations

__all__ = ["DatamoatError", "BadInput", "NotFound", "Tampered"]


class DatamoatError(Exception):
    """Base class for errors caused by the caller, not by a bug."""

    exit_code = 2
    http_status = 400


class BadInput(DatamoatError):
    """The input is malformed, out of range or inconsistent."""


class NotFound(DatamoatError):
    """An id, name or path does not exist."""

    http_status = 404


class Tampered(DatamoatError):
    """Stored state fails its integrity check (an altered or deleted audit row):
    not the caller's input, so exit code 1, not 2."""

    exit_code = 1
    http_status = 500
