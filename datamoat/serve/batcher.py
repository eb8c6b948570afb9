"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Requests queue their inputs; one loop takes the first, then keeps taking
more until the batch holds `max_batch_size` inputs or `max_wait_ms` passed
since the first arrived, and runs the model once in a worker thread, so the
event loop keeps accepting requests meanwhile. While a batch runs the next
one fills up, so under load batches grow on their own. `max_batch_size=1`
turns batching off.

The serving state is read when the batch is dispatched, not when requests
arrive: a batch never runs on a state older than its newest request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.errors import DatamoatError
from datamoat.serve.errors import Unavailable
from datamoat.serve.inputs import Prepare

__all__ = ["Batcher"]


@dataclasses.dataclass
class _Item:
    prepare: Prepare
    x: np.ndarray  # (n, C, H, W) raw pixels, shaped for the state current at submit time
    future: asyncio.Future


class Batcher:
    """Collects inputs from concurrent requests into model calls.

    >>> b = Batcher(lambda: state, max_batch_size=32, max_wait_ms=2.0)  # doctest: +SKIP
    >>> state, probs, x = await b.submit(prepare, x)  # doctest: +SKIP
    """

    def __init__(
        self,
        current_state: Callable[[], Any],
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] = lambda n: None,
    ):
        self.current_state = current_state
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: _Item | None = None  # took it, but it did not fit the last batch

    async def submit(self, prepare: Prepare, x: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """(state used, probabilities (n, K), raw inputs used (n, C, H, W)) for one request."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(prepare, x, fut))
        return await fut

    async def run(self) -> None:
        """The batching loop; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            first = self._carry or await self._queue.get()
            self._carry = None
            items, n = [first], len(first.x)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch_size:
                try:  # take what is already queued without waiting, then wait until the deadline
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if n + len(item.x) > self.max_batch_size:
                    self._carry = item
                    break
                items.append(item)
                n += len(item.x)
            state = self.current_state()  # read at dispatch: see the module docstring
            if state.model is None:
                results: list[Any] = [Unavailable(state.reason)] * len(items)
            else:
                try:
                    results = await asyncio.to_thread(_infer, state.model, items)
                    self.on_batch(n)
                except Exception as e:  # a model failure fails this batch, never the loop
                    results = [e] * len(items)
            for item, res in zip(items, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(res, Exception):
                    item.future.set_exception(res)
                else:
                    item.future.set_result((state, *res))


def _infer(model: Any, items: list[_Item]) -> list[Any]:
    """Run one batch: per item (probs, x) or the item's own input error."""
    xs: list[np.ndarray | Exception] = []
    for it in items:
        if it.x.shape[1:] == model.input_shape:
            xs.append(it.x)
            continue
        try:  # the served model changed shape since the request was parsed
            xs.append(it.prepare(model.input_shape))
        except DatamoatError as e:
            xs.append(e)
    good = [x for x in xs if not isinstance(x, Exception)]
    probs = model.probabilities(np.concatenate(good)) if good else None  # (sum n, K)
    out: list[Any] = []
    i = 0
    for x in xs:
        if isinstance(x, Exception):
            out.append(x)
        else:
            out.append((probs[i : i + len(x)], x))
            i += len(x)
    return out
