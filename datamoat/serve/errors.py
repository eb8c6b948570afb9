"""HTTP-flavoured user errors of the server: each maps to its status code.

Like every `DatamoatError`, the message is one line naming the problem and
the fix; the app turns it into ``{"error": message}`` with `http_status`.
"""

from __future__ import annotations

from datamoat.errors import BadInput, DatamoatError

__all__ = ["Unavailable", "Overloaded", "Unprocessable", "TooLarge", "Conflict", "UnsupportedMedia", "TooMany"]


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
