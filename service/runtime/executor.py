"""A bounded pool of inference workers that serve the queue in deadline order.

Decode and inference run here, never on the event loop. Which queued job a free worker takes is
``service.core.schedule.pick`` (earliest deadline first, with capacity kept for tighter
deadlines); this module is only the threads, the lock and the hand-over to asyncio. The pool
itself refuses nothing new: admission control (``service.core.admission``) keeps its queue
bounded by refusing at the door. What it drops is a job past hope (``schedule.missed``) that
waited longer than its submitter allows: under overload such jobs wait behind every job that
can still be on time, and without a limit they would pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.core import schedule
from service.core.latency import Ewma

T = TypeVar("T")


@dataclass(frozen=True)
class Finished(Generic[T]):
    value: T
    queue_seconds: float
    run_seconds: float


class Shed(Exception):
    """The job could no longer meet its deadline and waited past the bound: it never ran."""


@dataclass
class _Pending:
    job: schedule.Job
    work: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    submitted: float
    shed_after_seconds: float


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    # Runs on the event loop. The awaiting side may have given up (cancelled) meanwhile.
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


class InferenceExecutor:
    def __init__(self, workers: int, initial_service_seconds: float) -> None:
        self.workers = workers
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._started: dict[int, tuple[float, float]] = {}  # worker -> (start, predicted run)
        self._closed = False
        # Mean time a worker spends on one job: the unit of admission's predicted queue wait.
        self.service_time = Ewma(initial_service_seconds)
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"edgefit-infer-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._started)

    @property
    def idle(self) -> bool:
        """No job queued or running."""
        return not self._queue and not self._started

    def ahead(self, now: float) -> int:
        """Queued jobs a new one would wait behind: all but those past hope, which wait last."""
        with self._cond:
            return sum(not schedule.missed(p.job, now) for p in self._queue)

    def snapshot(self, now: float) -> tuple[list[schedule.Job], list[float]]:
        """The queued jobs and every worker's predicted remaining seconds, as of ``now``."""
        with self._cond:
            queue = [p.job for p in self._queue]
            busy = schedule.busy_seconds(list(self._started.values()), self.workers, now)
        return queue, busy

    def submit(
        self, work: Callable[[], T], job: schedule.Job, shed_after_seconds: float = math.inf
    ) -> asyncio.Future[Finished[T]]:
        """Queue ``work`` at ``job``'s place now, so the very next admission decision counts it.
        Should the job be past hope (``schedule.missed``) after waiting ``shed_after_seconds``,
        it is dropped and the future raises ``Shed``.

        Call from the event loop. Cancelling the returned future does not stop the work.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Finished[T]] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            self._queue.append(_Pending(job, work, future, loop, time.perf_counter(), shed_after_seconds))
            self._cond.notify_all()

        def learn(done: asyncio.Future[Finished[T]]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.service_time.update(done.result().run_seconds)

        future.add_done_callback(learn)
        return future

    async def run(self, work: Callable[[], T], job: schedule.Job) -> Finished[T]:
        """Run ``work`` on a worker and wait for it."""
        return await asyncio.shield(self.submit(work, job))

    def _next(self, worker: int) -> _Pending | None:
        """Block until this worker may start a queued job; None once shut down and drained."""
        with self._cond:
            while True:
                if self._closed and not self._queue:
                    return None
                now = time.perf_counter()
                self._shed(now)
                others = schedule.busy_seconds(list(self._started.values()), self.workers - 1, now)
                i = schedule.pick([p.job for p in self._queue], others, now)
                if i is not None:
                    pending = self._queue.pop(i)
                    self._started[worker] = (now, pending.job.run_seconds)
                    return pending
                # Every queued job is held back: wait for a worker to finish, a new job, or the
                # moment the first held job can no longer afford to wait.
                release = schedule.next_release([p.job for p in self._queue], now)
                self._cond.wait(None if release is None else max(0.0, release - now))

    def _shed(self, now: float) -> None:
        """Settle the jobs past hope that waited longer than they may with ``Shed``; holds the lock."""
        kept = []
        for pending in self._queue:
            if schedule.missed(pending.job, now) and now - pending.submitted >= pending.shed_after_seconds:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits it any more
                    pending.loop.call_soon_threadsafe(
                        _settle, pending.future, None, Shed(f"waited {now - pending.submitted:.1f} s")
                    )
            else:
                kept.append(pending)
        self._queue = kept

    def _serve(self, worker: int) -> None:
        while (pending := self._next(worker)) is not None:
            self._run(worker, pending)
            # Nothing of the finished job may stay alive while this worker waits for the next
            # one: its work holds the served set it ran on, which a reload means to free.
            del pending

    def _run(self, worker: int, pending: _Pending) -> None:
        started = time.perf_counter()
        value: Any = None
        error: BaseException | None = None
        try:
            value = Finished(pending.work(), started - pending.submitted, time.perf_counter() - started)
        except Exception as exc:  # handed to the awaiting request, which maps it
            error = exc
        finally:
            with self._cond:
                del self._started[worker]
                self._cond.notify_all()
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits it any more
            pending.loop.call_soon_threadsafe(_settle, pending.future, value, error)

    def shutdown(self) -> None:
        """Finish running jobs, cancel queued ones, stop the workers."""
        with self._cond:
            self._closed = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for pending in dropped:
            with contextlib.suppress(RuntimeError):
                pending.loop.call_soon_threadsafe(pending.future.cancel)
        for thread in self._threads:
            thread.join()
