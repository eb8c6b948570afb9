"""Schemathesis against the app's own OpenAPI schema, in-process over ASGI:
whatever the generated (valid and invalid) requests, never a 5xx."""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis.checks import not_a_server_error

from datamoat.registry.core import Registry
from datamoat.serve import ServeConfig, create_app

from .serve_util import auth


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# .npy bodies: real arrays of any numeric dtype and small shape (most the wrong shape or range), and raw bytes.
schemathesis.openapi.media_type(
    "application/x-npy",
    st.one_of(
        hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=4, max_side=9)).map(_npy),
        st.binary(max_size=2048),
    ),
)

# The schema does not depend on the registry's content: load it from an empty app at import.
schema = schemathesis.openapi.from_dict(create_app(Registry("sqlite://")).openapi())
schema.config.generation.update(modes=["positive", "negative"])


@pytest.fixture
def app(reg):
    app = create_app(reg.r, ServeConfig(poll_interval_s=0.02, ort_threads=1, max_upload_bytes=64 * 1024))
    yield app
    # Schemathesis starts an ASGI app's lifespan on first call and keeps it until exit: stop the watcher now.
    stop = getattr(schemathesis.python.asgi, "shutdown_lifespans", None)
    if stop is not None:
        stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case, reg, app):
    # The admin token passes auth everywhere, so the fuzzer reaches the body handling.
    response = case.call_and_validate(app=app, headers=auth(reg.tokens["admin"]), checks=[not_a_server_error])
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
