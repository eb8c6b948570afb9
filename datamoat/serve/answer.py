"""One request's inputs to answers, for every protocol the server speaks (`/v1/predict` and the
Open Inference Protocol's infer): the batcher, the control guarantee, the review policy and
suppressions, the prediction log, the review queue and the answer metrics, in one place."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from datamoat.errors import TooLarge, Unavailable
from datamoat.inference.engine import decide
from datamoat.inference.inputs import Prepare
from datamoat.registry.answer_rows import input_hash, log_rows, review_rows
from datamoat.serve.shadow import route

__all__ = ["answer"]


async def answer(
    ctx: Any, actor: str, prepare: Prepare, x: np.ndarray, client: str | None = None
) -> tuple[Any, list[dict[str, Any]], np.ndarray]:
    """(the state that answered, the answers, the model's probabilities (N, K)) for inputs `x`
    (N, C, H, W) that `prepare` made; the caller's token `actor` is charged for review items, and
    `client` (else `actor`) keys a canary routed by client.

    The answer always comes from the state current after inference (re-run up to three times if a
    control command changed the served version meanwhile), so no answer outlives a takedown, and a
    canary's request goes back to the alias's version once the canary ends.
    """
    cfg = ctx.config
    if len(x) > cfg.max_inputs_per_request:
        raise TooLarge(f"{len(x)} inputs in one request; the limit is {cfg.max_inputs_per_request}: split the batch")
    role = route(ctx.controller.state, x, client or actor)
    for _ in range(3):
        used, probs, x = await ctx.batcher.submit(prepare, x, role)
        top, why = ctx.controller.state, ctx.controller.unavailable()  # re-check after inference: the guarantee
        if why or top.model is None:
            raise Unavailable(why or top.reason)
        cur = top.side(role)
        if cur.model.version_id == used.model.version_id:
            break
        role = cur.role
        x = prepare(cur.model.input_shape, cur.model.photo)
    else:
        raise Unavailable("the served model changed three times during this request: retry it")
    pol = cur.policy  # `Registry.policy` of the answering version, as of the state's generation
    answers = [
        {"prediction_id": str(uuid.uuid4()), **a}
        for a in decide(probs, cur.model.classes, cur.suppressed, cfg.top_k, pol.get("threshold"), pol.get("per_class"))
    ]

    def records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        hashes = [input_hash(xi) for xi in x]
        audit = cfg.audit_fraction if pol.get("target_accuracy") is not None else 0.0
        queued = review_rows(cur, answers, x, audit) if cfg.review_queue else []
        return log_rows(cur, ctx.server_id, answers, hashes), queued

    # Hashing and copying pixels of a big batch would hold the event loop: a thread does it.
    rows, queued = records() if len(x) <= 8 else await asyncio.to_thread(records)
    if queued and not ctx.review_quota.take(actor, len(queued)):  # one token cannot fill the review queue
        ctx.metrics.review_skipped.inc(len(queued))
        queued = []
    ctx.plog.add(rows, queued)
    ctx.metrics.answers(answers)
    ctx.metrics.release_answers.labels(cur.role).inc(len(answers))
    _off_path(ctx, top, cur, prepare, x, answers)
    return cur, answers, probs


def _off_path(ctx: Any, top: Any, cur: Any, prepare: Prepare, x: np.ndarray, answers: list[dict[str, Any]]) -> None:
    """Queue the other side of a released request: the alias's version on a canary's request, the
    shadow on the alias's. Pairs cite the logged answer, so they need the prediction log."""
    if ctx.shadow is None or not ctx.config.log_predictions:
        return
    if cur.role == "canary":
        ctx.shadow.submit("canary", cur, top.model.version_id, prepare, x, answers)
    elif top.shadow is not None:
        ctx.shadow.submit("shadow", cur, top.shadow.model.version_id, prepare, x, answers)
