"""The executor's threads follow the scheduler's rule: deadline order, and shutdown."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest

from service.core.schedule import Job
from service.runtime.executor import InferenceExecutor, Shed


def test_a_free_worker_takes_the_earliest_deadline() -> None:
    async def scenario() -> list[str]:
        executor = InferenceExecutor(workers=1, initial_service_seconds=0.01)
        gate = threading.Event()
        order: list[str] = []
        try:
            blocker = executor.submit(gate.wait, Job(key=0.0, run_seconds=0.0))
            while executor.running == 0:  # the worker holds the blocker: the rest must queue
                await asyncio.sleep(0.001)
            jobs = [
                executor.submit(lambda n=name: order.append(n), Job(key=key, run_seconds=0.001))
                for name, key in (("none", 1e9), ("50ms", 3e8), ("10ms", 1e8), ("20ms", 2e8))
            ]
            assert executor.queued == 4
            gate.set()
            await asyncio.gather(blocker, *jobs)
        finally:
            executor.shutdown()
        return order

    assert asyncio.run(scenario()) == ["10ms", "20ms", "50ms", "none"]


def test_errors_reach_the_caller_and_shutdown_cancels_the_queue() -> None:
    async def scenario() -> None:
        executor = InferenceExecutor(workers=1, initial_service_seconds=0.01)
        with pytest.raises(ZeroDivisionError):
            await executor.run(lambda: 1 / 0, Job(key=0.0, run_seconds=0.0))
        gate = threading.Event()
        running = executor.submit(gate.wait, Job(key=0.0, run_seconds=0.0))
        while executor.running == 0:
            await asyncio.sleep(0.001)
        queued = executor.submit(lambda: None, Job(key=1.0, run_seconds=0.0))
        stopping = threading.Thread(target=executor.shutdown)
        stopping.start()
        while executor.queued:  # shutdown drops the queue at once, then waits for the worker
            await asyncio.sleep(0.001)
        gate.set()
        await running  # the running job still finishes
        stopping.join()
        await asyncio.sleep(0)  # let the loop deliver the cancellation
        assert queued.cancelled()
        with pytest.raises(RuntimeError):
            executor.submit(lambda: None, Job(key=1.0, run_seconds=0.0))

    asyncio.run(scenario())


def test_a_job_past_hope_is_shed_once_it_waited_as_long_as_it_may() -> None:
    async def scenario() -> None:
        executor = InferenceExecutor(workers=1, initial_service_seconds=0.01)
        gate = threading.Event()
        try:
            blocker = executor.submit(gate.wait, Job(key=0.0, run_seconds=0.0))
            while executor.running == 0:
                await asyncio.sleep(0.001)
            # Its deadline has passed: past hope. The other can still be on time for a long while.
            hopeless = executor.submit(lambda: "late", Job(key=0.0, run_seconds=0.001, budgeted=True), 0.05)
            fresh = executor.submit(lambda: "on time", Job(key=1e12, run_seconds=0.001, budgeted=True), 0.05)
            # A new job would wait behind the fresh one only.
            assert executor.queued == 2 and executor.ahead(time.perf_counter()) == 1
            await asyncio.sleep(0.1)
            gate.set()
            await blocker
            assert (await fresh).value == "on time"
            with pytest.raises(Shed):
                await hopeless
            # Without patience (a strict request, a cascade's second stage) it goes at once.
            gate.clear()
            blocker = executor.submit(gate.wait, Job(key=0.0, run_seconds=0.0))
            while executor.running == 0:
                await asyncio.sleep(0.001)
            impatient = executor.submit(lambda: "late", Job(key=0.0, run_seconds=0.001, budgeted=True), 0.0)
            patient = executor.submit(lambda: "late", Job(key=0.0, run_seconds=0.001, budgeted=True), 60.0)
            gate.set()
            await blocker
            assert (await patient).value == "late"
            with pytest.raises(Shed):
                await impatient
        finally:
            gate.set()
            executor.shutdown()

    asyncio.run(scenario())


def test_an_idle_worker_keeps_nothing_of_its_last_job_alive() -> None:
    """A finished job's work holds what it ran on (a reload's replaced sessions): an idle worker
    waiting for its next job must not keep it."""

    class Held:
        pass

    async def scenario() -> bool:
        executor = InferenceExecutor(workers=1, initial_service_seconds=0.01)
        held = Held()
        kept = weakref.ref(held)
        try:
            await executor.run(lambda held=held: held, Job(key=0.0, run_seconds=0.0))
            del held
            for _ in range(100):  # the worker lets go as it goes back to wait: give it a moment
                gc.collect()
                if kept() is None:
                    return True
                await asyncio.sleep(0.01)
            return False
        finally:
            executor.shutdown()

    assert asyncio.run(scenario())


def test_idle_means_nothing_queued_or_running() -> None:
    """What the selector calls contended (``not idle``): a job running, or one waiting."""

    async def scenario() -> list[bool]:
        executor = InferenceExecutor(workers=1, initial_service_seconds=0.01)
        gate = threading.Event()
        seen = [executor.idle]
        try:
            running = executor.submit(gate.wait, Job(key=0.0, run_seconds=0.0))
            while executor.running == 0:
                await asyncio.sleep(0.001)
            seen.append(executor.idle)  # one running, none queued
            queued = executor.submit(lambda: None, Job(key=1.0, run_seconds=0.0))
            seen.append(executor.idle)
            gate.set()
            await asyncio.gather(running, queued)
            while executor.running:
                await asyncio.sleep(0.001)
            seen.append(executor.idle)
        finally:
            executor.shutdown()
        return seen

    assert asyncio.run(scenario()) == [True, False, False, True]
