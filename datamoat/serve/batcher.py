"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Requests queue their inputs; one inference thread takes the first, then
keeps taking more until the batch holds `max_batch_size` inputs or
`max_wait_ms` passed since the first arrived, runs the model, hands the
results back to the event loop and starts on the next batch at once.
While a batch runs the next one fills up, so under load batches grow on
their own. `max_batch_size=1` turns batching off.

Why a thread of its own rather than ``await asyncio.to_thread(...)`` per
batch: that resumes the batching loop only when the event loop gets round to
it, behind every HTTP callback already queued, and the model waits meanwhile.
ONNX Runtime releases the GIL while it runs, so here the model runs while
the event loop parses requests and writes answers.

The serving state is read when the batch is dispatched, not when requests
arrive: a batch never runs on a state older than its newest request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.errors import DatamoatError, Overloaded, Unavailable
from datamoat.inference.inputs import Prepare

__all__ = ["Batcher"]

_STOP = object()


@dataclasses.dataclass
class _Item:
    prepare: Prepare
    x: np.ndarray  # (n, C, H, W) raw pixels, shaped for the state current at submit time
    future: asyncio.Future
    role: str = "primary"  # the release side the request was routed to (primary | canary)


class Batcher:
    """Collects inputs from concurrent requests into model calls.

    >>> b = Batcher(lambda: state, max_batch_size=32, max_wait_ms=2.0)  # doctest: +SKIP
    >>> side, probs, x = await b.submit(prepare, x)  # doctest: +SKIP
    """

    def __init__(
        self,
        current_state: Callable[[], Any],
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] = lambda n: None,
        max_queued: int = 1 << 30,
        on_outputs: Callable[[Any, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    ):
        self.current_state = current_state
        self.on_outputs = on_outputs  # called on the inference thread; must be quick
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # thread-safe, put never blocks
        self._carry: _Item | None = None  # took it, but it did not fit the last batch (inference thread only)
        self.max_queued, self.queued = max_queued, 0  # inputs submitted and not answered (event loop only)

    async def submit(
        self, prepare: Prepare, x: np.ndarray, role: str = "primary"
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """(the state's side that answered, probabilities (n, K), raw inputs used (n, C, H, W)) for one
        request routed to `role` (a canary's side answers only while the canary runs)."""
        n = len(x)
        if self.queued + n > self.max_queued:
            raise Overloaded(
                f"the server has {self.queued} inputs waiting for the model (limit {self.max_queued}): "
                "retry in a moment"
            )
        fut = asyncio.get_running_loop().create_future()
        self.queued += n
        try:
            self._queue.put(_Item(prepare, x, fut, role))
            return await fut
        finally:
            self.queued -= n

    async def run(self) -> None:
        """Run the inference thread until cancelled; then let it finish its batch and stop."""
        loop = asyncio.get_running_loop()
        worker = threading.Thread(target=self._work, args=(loop,), name="datamoat-batcher", daemon=True)
        worker.start()
        try:
            await loop.create_future()  # never set: this task lives until the app shuts down
        finally:
            self._queue.put(_STOP)
            worker.join(timeout=5.0)

    def _take(self) -> list[_Item] | None:
        """The next batch (blocking), or None when told to stop."""
        first = self._carry or self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        items, n = [first], len(first.x)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch_size:
            try:  # take what is already queued without waiting, then wait until the deadline
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP or n + len(item.x) > self.max_batch_size:
                self._carry = item
                break
            items.append(item)
            n += len(item.x)
        return items

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """The inference thread: form a batch, run it, post the results to the loop, repeat."""
        while (items := self._take()) is not None:
            state = self.current_state()  # read at dispatch: see the module docstring
            n = sum(len(it.x) for it in items)  # inputs the model ran on, for the batch-size metric
            if state.model is None:
                results: list[Any] = [Unavailable(state.reason)] * len(items)
                n = 0
            else:
                try:
                    results = _infer(state, items, self.on_outputs)
                except Exception as e:  # a model failure fails this batch, never the thread
                    results = [e] * len(items)
                    n = 0
            try:
                loop.call_soon_threadsafe(self._deliver, items, results, n)
            except RuntimeError:  # the loop closed under us: nobody is waiting any more
                return

    def _deliver(self, items: list[_Item], results: list[Any], n: int) -> None:
        """On the event loop: resolve each request's future."""
        if n:
            self.on_batch(n)
        for item, res in zip(items, results, strict=True):
            if item.future.done():  # the client went away
                continue
            if isinstance(res, Exception):
                item.future.set_exception(res)
            else:
                item.future.set_result(res)


def _infer(state: Any, items: list[_Item], on_outputs: Any = None) -> list[Any]:
    """Run one batch, one model call per release side: per item (side, probs, x) or the item's own
    input error. `on_outputs(side, probs, embeddings, x)` sees each side's inputs when the model
    gives embeddings (the drift monitor)."""
    out: list[Any] = [None] * len(items)
    for role in dict.fromkeys(it.role for it in items):  # primary and canary, in arrival order
        side = state.side(role)
        mine = [i for i, it in enumerate(items) if it.role == role]
        for i, res in zip(mine, _infer_side(side, [items[i] for i in mine], on_outputs), strict=True):
            out[i] = res
    return out


def _infer_side(side: Any, items: list[_Item], on_outputs: Any) -> list[Any]:
    model = side.model
    xs: list[np.ndarray | Exception] = []
    for it in items:
        if it.x.shape[1:] == model.input_shape:
            xs.append(it.x)
            continue
        try:  # the served model changed shape since the request was parsed
            xs.append(it.prepare(model.input_shape, model.photo))
        except DatamoatError as e:
            xs.append(e)
    good = [x for x in xs if not isinstance(x, Exception)]
    probs = None
    if good:
        batch = np.concatenate(good)  # (sum n, C, H, W)
        probs, emb = model.run(batch)  # (sum n, K), (sum n, D) or None
        if emb is not None and on_outputs is not None:
            on_outputs(side, probs, emb, batch)
    out: list[Any] = []
    i = 0
    for x in xs:
        if isinstance(x, Exception):
            out.append(x)
        else:
            assert probs is not None  # some input was good
            out.append((side, probs[i : i + len(x)], x))
            i += len(x)
    return out
