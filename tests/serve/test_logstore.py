"""The prediction log's writer through a database outage: rows are held, within a bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from datamoat.registry.core import Registry
from datamoat.registry.ledger import predictions
from datamoat.serve.logstore import PredictionLog

from .serve_util import registry_out_of_reach


def _rows(ids: range) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "ts": float(i),
            "server_id": "srv",
            "alias": "production",
            "model_version": "v1",
            "generation": 1,
            "input_sha256": "0" * 64,
            "label": "cat",
            "abstained": False,
            "needs_review": False,
            "output": "{}",
        }
        for i in ids
    ]


def test_rows_of_an_outage_are_written_after_it_and_only_the_oldest_past_the_bound_are_lost(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    plog = PredictionLog(reg, max_pending=4)  # holds at most 8 x 4 rows through an outage
    plog.add(_rows(range(3)))
    with registry_out_of_reach(reg, tmp_path / "away"):
        with pytest.raises(sa.exc.OperationalError):
            asyncio.run(plog.flush())
        plog.add(_rows(range(3, 40)))
        with pytest.raises(sa.exc.OperationalError):
            asyncio.run(plog.flush())
    asyncio.run(plog.flush())
    with reg.engine.connect() as conn:
        written = set(conn.execute(sa.select(predictions.c.id)).scalars())
    assert written == {f"p{i}" for i in range(8, 40)}
