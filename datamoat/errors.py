"""User-facing errors.

Every error a user can cause by passing bad input is a `DatamoatError`: its
message is one line that names what is wrong and how to fix it. The CLI turns
it into exit code 2; the HTTP layer turns it into a 4xx with a JSON body
(``{"error": message}`` with `http_status`: see `datamoat.inference.http`).
One module holds them all, so every layer raises the same ones.
"""

from __future__ import annotations

__all__ = [
    "DatamoatError",
    "BadInput",
    "NotFound",
    "Tampered",
    "Unavailable",
    "Overloaded",
    "Unprocessable",
    "TooLarge",
    "Conflict",
    "UnsupportedMedia",
    "TooMany",
]


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


class Unavailable(DatamoatError):
    """No servable model right now (taken down, no alias, load failure)."""

    http_status = 503


class Unprocessable(BadInput):
    """Well-formed but unusable: wrong shape, non-numeric values, unknown label."""

    http_status = 422


class TooLarge(BadInput):
    """An upload or an image over the configured limits."""

    http_status = 413


class Conflict(BadInput):
    """The request repeats one already recorded."""

    http_status = 409


class UnsupportedMedia(BadInput):
    """A request body in a format the endpoint does not read."""

    http_status = 415


class Overloaded(Unavailable):
    """The server's queue is full: retry after a moment (503)."""


class TooMany(BadInput):
    """A caller over its quota (429): retry later, or ask for a higher quota."""

    http_status = 429
