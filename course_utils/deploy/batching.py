"""Dynamic batching (case study §4: max batch 8, 100 ms timeout).

Requests are queued; one worker takes the first waiting request, then keeps collecting until the
batch holds ``max_batch`` requests or ``max_wait_ms`` have passed since it took the first, runs
the whole batch in one model call (in a thread, so the event loop keeps accepting requests), and
answers every request. Generation of 8 reports in one batch costs little more than one, so
under concurrent load throughput grows with the batch size; a lone request waits at most
``max_wait_ms`` extra.

The batcher records the queue depth each request found on arrival and the size of every batch,
the monitoring signals §4 asks for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatcherStats:
    """What the batcher saw: queue depth at each arrival, batch sizes, batch run times (ms)."""

    queue_depths: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        import numpy as np

        depths = np.asarray(self.queue_depths or [0])
        sizes = np.asarray(self.batch_sizes or [0])
        return {
            "requests": float(len(self.queue_depths)),
            "batches": float(len(self.batch_sizes)),
            "mean_batch_size": float(sizes.mean()),
            "max_queue_depth": float(depths.max()),
            "mean_queue_depth": float(depths.mean()),
        }


class DynamicBatcher:
    """Collects concurrent requests into batches for ``run_batch(items) -> results``.

    Args:
        run_batch: a blocking function mapping a list of items to a list of results (same order).
        max_batch: most items per call (case study: 8).
        max_wait_ms: how long the first item of a batch waits for company (case study: 100).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        max_batch: int = 8,
        max_wait_ms: float = 100.0,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(
                f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}"
            )
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.stats = BatcherStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # A new event loop (e.g. a new test client) gets its own queue and worker.
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work())
        assert self._queue is not None
        return self._queue

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its result (exceptions of the batch are re-raised)."""
        queue = self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        self.stats.queue_depths.append(queue.qsize())
        await queue.put((item, future))
        return await future

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[Any, asyncio.Future]]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            items = [item for item, _ in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(None, self.run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"run_batch returned {len(results)} results for {len(items)}"
                    )
            except Exception as err:  # every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            finally:
                self.stats.batch_sizes.append(len(items))
                self.stats.batch_ms.append((time.perf_counter() - start) * 1e3)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Stop the worker (pending requests are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass
            self._worker = None


__all__ = ["BatcherStats", "DynamicBatcher"]
