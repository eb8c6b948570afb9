"""`Predictor`: one call, several endpoints, the first that answers wins.

Typically the device's own edge runtime first and the cloud API second
(or the reverse, to prefer the cloud while it is reachable). Both speak the
same ``POST /v1/predict``, so the answer has the same shape whichever
endpoint gave it; the result says which one did, and why the ones before it
did not.

A connection failure, a timeout, a 5xx (including 503 for a model that is
taken down or not installed) or a 429 moves on to the next endpoint. A 4xx
does not: the request itself is wrong, and another endpoint would refuse it
too.
"""

from __future__ import annotations

from typing import Any

import httpx

from datamoat.errors import BadInput, DatamoatError

__all__ = ["Predictor", "NoEndpointAnswered"]


class NoEndpointAnswered(DatamoatError):
    """Every endpoint failed or timed out."""

    http_status = 503


class Predictor:
    """Predictions with fallback across endpoints.

    `endpoints` are base URLs, or ``(url, token)`` pairs for endpoints that
    need a predict token (the cloud API does; a local runtime does not).

    >>> with Predictor(["http://127.0.0.1:8100", ("https://api.example", "dm_predict_...")], timeout=0.5) as p:
    ...     out = p.predict([[0] * 8] * 8)  # doctest: +SKIP
    >>> out["endpoint"], out["model_version"]  # doctest: +SKIP
    ('http://127.0.0.1:8100', '0e25a8328810')
    """

    def __init__(self, endpoints: list[str | tuple[str, str | None]], timeout: float = 1.0):
        if not endpoints:
            raise BadInput("Predictor needs at least one endpoint URL")
        self.endpoints = [(e, None) if isinstance(e, str) else (e[0], e[1]) for e in endpoints]
        self.timeout = timeout
        self._client = httpx.Client(timeout=timeout)

    def predict(self, inputs: Any = None, *, image: bytes | None = None, content_type: str = "image/png") -> dict:
        """Raw 0..255 pixel `inputs` (array-like), or an encoded `image`; returns the answer plus
        ``endpoint`` (who answered) and ``fallbacks`` (who failed first, and how)."""
        if (inputs is None) == (image is None):
            raise BadInput("pass either inputs (pixel values) or image (PNG/JPEG bytes)")
        if inputs is not None:
            body: dict[str, Any] = {"json": {"inputs": inputs.tolist() if hasattr(inputs, "tolist") else inputs}}
        else:
            body = {"content": image, "headers": {"Content-Type": content_type}}
        failed: list[dict[str, Any]] = []
        for url, token in self.endpoints:
            headers = dict(body.get("headers", {}))
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                r = self._client.post(f"{url.rstrip('/')}/v1/predict", **{**body, "headers": headers})
            except httpx.TimeoutException as e:
                failed.append({"endpoint": url, "error": f"timed out after {self.timeout:g}s ({type(e).__name__})"})
                continue
            except httpx.TransportError as e:
                failed.append({"endpoint": url, "error": f"unreachable ({type(e).__name__}: {e})"})
                continue
            if r.status_code >= 500 or r.status_code == 429:
                failed.append({"endpoint": url, "status": r.status_code, "error": _error(r)})
                continue
            if r.status_code >= 400:
                raise BadInput(f"{url} refused the request ({r.status_code}): {_error(r)}")
            return {**r.json(), "endpoint": url, "fallbacks": failed}
        tried = "; ".join(f"{f['endpoint']}: {f['error']}" for f in failed)
        raise NoEndpointAnswered(f"no endpoint answered ({tried}): check the device runtime and the network")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error"))
    except Exception:
        return r.text[:200] or r.reason_phrase
