"""H2: an edge upload with "exact": false carried any input_sha256, and a
reviewer's trusted label for the pixels shown was filed under the device's
hash: one device could aim a trusted label at any image, and make honest
labels for that image look like they contradict a reviewer."""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np

from datamoat.edge.fleet import Fleet
from datamoat.feedback import Quarantine
from datamoat.feedback.review import ReviewQueue
from datamoat.registry.answer_rows import input_hash


def upload_item(reg, vid: str, pixels: np.ndarray, claimed_sha: str) -> dict:
    """One low-confidence sample as a device uploads it, claiming `claimed_sha` as its input's hash."""
    row = reg.version(vid)
    return {
        "prediction_id": str(uuid.uuid4()),
        "model_version": vid,
        "shape": list(pixels.shape),
        "pixels": base64.b64encode(pixels.tobytes()).decode(),
        "label": row["info"]["classes"][0],
        "top_k": [{"label": row["info"]["classes"][0], "probability": 0.4}],
        "abstained": False,
        "needs_review": True,
        "ts": time.time(),
        "exact": False,
        "input_sha256": claimed_sha,
    }


def test_h2_a_reviewed_label_is_filed_under_the_pixels_the_reviewer_saw(world):
    fleet = Fleet(world.reg)
    fleet.enroll("cam-evil", "lab", actor="ops")
    device = next(d for d in fleet.devices() if d["id"] == "cam-evil")
    shown, target = world.x[0], world.x[1]  # (C, H, W) uint8 each; the attacker aims at `target`
    item = upload_item(world.reg, world.vid, shown, claimed_sha=input_hash(target))
    assert fleet.record_uploads(device, [item], max_per_hour=100)["stored"] == 1

    queue = ReviewQueue(world.reg)
    out = queue.decide(item["prediction_id"], world.reg.version(world.vid)["info"]["classes"][2], actor="ana")
    filed = next(r for r in Quarantine(world.reg).items() if r["id"] == out["feedback_item"])
    assert filed["input_sha256"] == input_hash(shown) != input_hash(target)
