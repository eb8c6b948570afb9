"""L5: a device's own timestamp ordered the review queue, so a device could
put its samples ahead of everyone else's by claiming they were old."""

from __future__ import annotations

import time

from datamoat.edge.fleet import Fleet
from datamoat.feedback.review import ReviewQueue
from datamoat.registry.answer_rows import input_hash

from .test_h2_review_hash import upload_item


def test_l5_the_queue_is_ordered_by_when_the_server_received_an_item(world, fresh):
    reg, vid = fresh.reg, fresh.vid
    fleet = Fleet(reg)
    for name in ("honest", "pushy"):
        fleet.enroll(name, "lab", actor="ops")
    devices = {d["id"]: d for d in fleet.devices()}
    first = upload_item(reg, vid, world.x[0], input_hash(world.x[0]))
    fleet.record_uploads(devices["honest"], [first], max_per_hour=100)
    time.sleep(0.01)
    jumper = {**upload_item(reg, vid, world.x[1], input_hash(world.x[1])), "ts": 1.0}  # "sent in 1970"
    fleet.record_uploads(devices["pushy"], [jumper], max_per_hour=100)
    assert ReviewQueue(reg).next()["item"]["prediction_id"] == first["prediction_id"]
