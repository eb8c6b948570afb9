"""Every route into quarantine, and the bad inputs each refuses."""

import numpy as np
import pytest
import sqlalchemy as sa

from datamoat.errors import BadInput, Conflict, NotFound
from datamoat.feedback import GateConfig, evaluate_gate, input_hash

from .helpers_fb import served, server_feedback


def test_edge_submit_lands_pending_with_provenance(q, trained):
    img = trained.x[0]
    i = q.submit(source="cam-1", label=str(trained.y[0]), pixels=img, prediction_id="edge-uuid-1")
    (item,) = q.items()
    assert item["id"] == i and item["status"] == "pending" and item["kind"] == "edge"
    assert item["model_version"] == trained.vid and item["prediction_id"] == "edge-uuid-1"
    assert item["input_sha256"] == input_hash(img) and item["has_pixels"]
    np.testing.assert_array_equal(q.pixels([i])[i], img)


def test_bad_inputs_are_clear_errors(q, trained):
    img, label = trained.x[0], str(trained.y[0])
    with pytest.raises(NotFound, match="unknown prediction id"):
        q.submit(source="api", label=label, prediction_id="nope", kind="serve")
    with pytest.raises(BadInput, match="not one of the model's classes"):
        q.submit(source="cam-1", label="cat", pixels=img)
    with pytest.raises(BadInput, match="pixels must be uint8"):
        q.submit(source="cam-1", label=label, pixels=img.astype(np.float32))
    q.submit(source="cam-1", label=label, pixels=img)
    with pytest.raises(Conflict, match="already sent feedback"):
        q.submit(source="cam-1", label=label, pixels=img)
    q.submit(source="cam-2", label=label, pixels=img)  # another source may label the same image
    with pytest.raises(Conflict):  # an import is all or nothing
        q.import_items(trained.x[:3], [label] * 3, source="cam-1")
    assert len(q.items()) == 2
    assert q.import_items(trained.x[:3], [label] * 3, source="cam-1", skip_duplicates=True) == [3, 4]


def test_server_feedback_needs_its_pixels(q, trained):
    img, label = trained.x[trained.right[0]], str(trained.y[trained.right[0]])
    pid = served(q, img)
    with pytest.raises(NotFound):
        server_feedback(q, "unknown", label, "api")  # the server refuses it before quarantine
    server_feedback(q, pid, label, "app-users")
    assert q.sync() == 1 and q.sync() == 0  # idempotent
    (item,) = q.items()
    assert item["kind"] == "serve" and item["prediction_id"] == pid and not item["has_pixels"]
    evaluate_gate(q, GateConfig(), scorer=trained.scorer)
    assert q.items()[0]["status"] == "held" and "no pixels" in q.items()[0]["reasons"][0]
    assert q.attach_pixels(np.delete(trained.x, trained.right[0], axis=0)) == 0
    assert q.attach_pixels(img[None]) == 1
    evaluate_gate(q, GateConfig(), scorer=trained.scorer)
    assert q.items()[0]["status"] == "accepted"
    # A client may also send the pixels with a logged prediction id; they must be that prediction's.
    pid2 = served(q, trained.x[1])
    with pytest.raises(BadInput, match="do not match"):
        q.submit(source="app", label=label, prediction_id=pid2, pixels=trained.x[2], kind="serve")
    assert q.submit(source="app", label=label, prediction_id=pid2, pixels=trained.x[1], kind="serve")


def test_decisions_are_logged_append_only(q, trained):
    ids = q.import_items(trained.x[:2], [str(v) for v in trained.y[:2]], source="vendor")
    q.decide([ids[0]], "accepted", actor="ana", reason="checked")
    q.decide([ids[1]], "rejected", actor="ana", reason="blurry")
    with pytest.raises(NotFound, match="unknown feedback item"):
        q.decide([999], "accepted", actor="ana")
    with pytest.raises(BadInput, match="reserved"):
        q.decide([ids[0]], "accepted", actor="gate")
    log = q.decisions()
    assert [(e["item_id"], e["decision"], e["actor"]) for e in log] == [
        (ids[0], "accepted", "ana"),
        (ids[1], "rejected", "ana"),
    ]
    assert "blurry" in log[1]["reason"]
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), q.registry.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM fb_decisions")
    # A person's decision is final: the gate does not revisit it.
    evaluate_gate(q, GateConfig(require_approval=True), scorer=trained.scorer)
    assert [r["status"] for r in q.items()] == ["accepted", "rejected"]


def test_concurrent_submissions_all_land_while_others_write(q, trained):
    """Each submission reads (is it a duplicate?) and then writes. Begun as a plain deferred
    transaction, SQLite refuses the write at once ("database is locked", no busy wait) when another
    connection committed after the read: a reviewer's decision failed with a 500 under load."""
    import threading

    errors: list[BaseException] = []

    def submit(k: int) -> None:
        try:
            for i in range(15):
                q.submit(source=f"cam-{k}", label="3", pixels=trained.x[(k * 15 + i) % len(trained.x)])
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with q.registry.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from fb_items")).scalar_one() == 90
