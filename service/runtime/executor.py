"""A bounded pool of inference workers, with the counts admission control needs.

Decode and inference run here, never on the event loop. The pool itself never refuses work:
admission control (``service.core.admission``) keeps its queue bounded by refusing at the door.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.core.latency import Ewma

T = TypeVar("T")


@dataclass(frozen=True)
class Finished(Generic[T]):
    value: T
    queue_seconds: float
    run_seconds: float


class InferenceExecutor:
    def __init__(self, workers: int, initial_service_seconds: float) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgefit-infer")
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0
        # Mean time a worker spends on one job: the unit of predicted queue wait.
        self.service_time = Ewma(initial_service_seconds)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def submit(self, job: Callable[[], T]) -> asyncio.Future[Finished[T]]:
        """Queue ``job`` for a worker now, so the very next admission decision counts it.

        Call from the event loop. Cancelling the returned future does not stop the job.
        """
        submitted = time.perf_counter()
        with self._lock:
            self._queued += 1

        def work() -> Finished[T]:
            started = time.perf_counter()
            with self._lock:
                self._queued -= 1
                self._running += 1
            try:
                value = job()
            finally:
                with self._lock:
                    self._running -= 1
            return Finished(value, started - submitted, time.perf_counter() - started)

        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, work)
        except RuntimeError:
            with self._lock:
                self._queued -= 1
            raise

        def learn(done: asyncio.Future[Finished[T]]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.service_time.update(done.result().run_seconds)

        future.add_done_callback(learn)
        return future

    async def run(self, job: Callable[[], T]) -> Finished[T]:
        """Run ``job`` on a worker and wait for it."""
        return await asyncio.shield(self.submit(job))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
