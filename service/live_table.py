"""The live latency table: what each answer teaches it, what it publishes, how it stays current.

After every answer (``record``) the tables behind the prices learn its timings and the metrics
count it. Once a second the predicted latencies are published as gauges; when the server is
idle, the variant measured longest ago is probed so that its figures follow the machine, and the
heap that traffic left behind is handed back. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model_store.cascades import Plan
from model_store.manifest import Variant
from service.core import schedule
from service.core.calibration import lesson
from service.core.frontier import Reason
from service.observability import Metrics
from service.results import Classification
from service.runtime.executor import InferenceExecutor
from service.runtime.memory import release_free_memory
from service.runtime.models import ServedModels
from service.served_set import Served
from service.settings import Settings

log = logging.getLogger(__name__)

REPROBE_PERIOD_SECONDS = 1.0


@dataclass(frozen=True)
class VariantState:
    """A served variant with its live figures (seconds), for ``GET /models`` and the status page."""

    variant: Variant
    classes: int
    p50_seconds: float
    p95_seconds: float
    profiled_p50_seconds: float
    profiled_p95_seconds: float
    last_run_seconds_ago: float | None  # None: never run since it was loaded
    selected: int
    frontier_seconds: float | None  # what this device's frontier compared it by; None: not chosen so


@dataclass(frozen=True)
class Candidate:
    """A variant of the served store that is not served, and why (``service.core.frontier.Reason``;
    ``detail`` says more, except for ``excluded``)."""

    variant: Variant
    reason: Reason
    detail: str | None = None
    frontier_seconds: float | None = None  # as ``VariantState``'s


@dataclass(frozen=True)
class PlanState:
    """A served cascade plan with what it did since it was loaded."""

    plan: Plan
    runs: int
    unsure: int  # runs whose first stage was below the threshold
    escalated: int  # runs whose second stage ran (unsure, and it still fit)
    selected: int


class LiveTable:
    def __init__(self, settings: Settings, metrics: Metrics, executor: InferenceExecutor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self._last_request = 0.0
        # When the heap was last handed back to the system (see ``refresh``).
        self._trimmed = 0.0

    def saw_request(self) -> float:
        """A request is being served: the server is not idle. Returns the time (``perf_counter``)."""
        self._last_request = now = time.perf_counter()
        return now

    def record(self, result: Classification, total_seconds: float) -> None:
        """What an answer teaches the latency table and the metrics; ``total_seconds`` as the HTTP
        layer measured it (first byte to answer)."""
        now = time.perf_counter()
        budget = result.budget_seconds
        met = result.budget_met(total_seconds)
        pricer = result.served.pricer
        first = result.stages[0]
        service = result.decode_seconds + result.inference_seconds
        # Everything else after the choice: the queues, and the answer's way back through the
        # event loop (under load, the event loop's lag: no variant's doing).
        wait_error = total_seconds - result.chosen_after_seconds - service - result.predicted_wait_seconds
        # A cascade's answers calibrate the plan's own margin (``Pricer.price_plan``).
        pricer.learn(
            first.variant.name if result.plan is None else result.plan.name,
            budget,
            image_format=result.image_format,
            work=result.decode_work,
            decode_seconds=first.decode_seconds,
            inferences=[(s.variant.name, s.inference_seconds) for s in result.stages],
            service_residual=service - result.point_seconds,
            # A job queued past hope waited behind every on-time one: no wait was predicted.
            wait_error=None if result.past_hope else wait_error,
            late=self._late(result, total_seconds),
            now=now,
            idle=result.idle,
        )
        for stage in result.stages:
            stage.metrics.inference_duration.observe(stage.inference_seconds)
        if result.plan is not None:
            self._count_cascade(result, result.plan)
        self.metrics.decode_duration.observe(result.decode_seconds)
        result.metrics.request_duration.observe(total_seconds)
        if budget is not None:
            (result.metrics.budget_met if met else result.metrics.budget_missed).inc()
            self.metrics.slack.observe(budget - total_seconds)

    @staticmethod
    def _late(result: Classification, total_seconds: float) -> bool | None:
        """What the answer teaches its tier's level (``calibration.lesson``); nothing without a
        budget, or from a pinned variant, whose price chose nothing."""
        if result.budget_seconds is None or result.reason == "pinned":
            return None
        saved = result.point_seconds - result.fastest_point_seconds
        return lesson(total_seconds, result.budget_seconds, result.predicted_seconds, saved)

    def _count_cascade(self, result: Classification, plan: Plan) -> None:
        """The plan's live counts (``/models``) and ``edgefit_cascade_total``."""
        counts = result.served.plan_counts[plan.name]
        counts.runs += 1
        counts.unsure += result.escalation != "answered"
        escalated = result.escalation == "escalated"
        counts.escalated += escalated
        self.metrics.cascade.labels(plan.small, "escalated" if escalated else "answered").inc()

    def publish(self, served: Served) -> None:
        """The predicted latency gauges of ``served``'s variants, as the table has them now."""
        now = time.perf_counter()
        gauge = self.metrics.predicted_latency
        latency = served.pricer.latency
        slowdown = latency.slowdown(now)
        for name in served.models.variants:
            gauge.labels(name, "0.5").set(latency.predict(name, 0.5, now, slowdown))
            gauge.labels(name, "0.95").set(latency.predict(name, 0.95, now, slowdown))

    async def keep_current(self, current: Callable[[], Served | None]) -> None:
        """Forever: refresh the table of the set ``current()`` serves.

        A failing round is logged and the next one runs as usual: the table must not silently
        stop following the machine.
        """
        while True:
            await asyncio.sleep(REPROBE_PERIOD_SECONDS)
            # Through a call, so that no reference to the set outlives the round: held over the
            # sleep, it kept a reload's replaced sessions alive.
            await self._refresh_current(current)

    async def _refresh_current(self, current: Callable[[], Served | None]) -> None:
        served = current()
        if served is None:
            return
        try:
            await self.refresh(served)
        except Exception:
            log.exception(
                "refreshing the live latency table failed; trying again in %g s", REPROBE_PERIOD_SECONDS
            )

    async def refresh(self, served: Served) -> None:
        """Publish the table; when idle, hand the heap back and re-probe the stalest variant."""
        self.publish(served)
        now = time.perf_counter()
        if not self.executor.idle or now - self._last_request <= REPROBE_PERIOD_SECONDS:
            return
        if self._trimmed < self._last_request:
            # Traffic leaves free heap in every worker's malloc arena (each inference's
            # intermediate tensors come from malloc): once idle, hand it back.
            self._trimmed = now
            await asyncio.to_thread(release_free_memory)
        latency = served.pricer.latency
        stale = [
            (latency.last_run(n) or 0.0, n)
            for n in served.models.variants
            if now - (latency.last_run(n) or 0.0) > self.settings.reprobe_idle_seconds
        ]
        if stale:
            _, name = min(stale)
            await self._probe(served, name)

    async def _probe(self, served: Served, name: str) -> None:
        runner = served.entries[name].runner
        size = runner.variant.resolution
        tensor = np.zeros((1, size, size, 3), dtype=np.uint8)

        def job() -> float:
            started = time.perf_counter()
            runner.infer(tensor)
            return time.perf_counter() - started

        now = time.perf_counter()
        # Runs only on an idle server; last in line should anything arrive meanwhile.
        probe = schedule.Job(schedule.dispatch_key(now, None), served.pricer.inference_seconds(name, now))
        finished = await self.executor.run(job, probe)
        served.pricer.latency.observe(name, finished.value, time.perf_counter())

    def describe(self, served: Served) -> list[VariantState]:
        """Every served variant with its live figures and how often it was chosen."""
        now = time.perf_counter()
        latency = served.pricer.latency
        states = []
        for name, v in served.models.variants.items():
            last_run = latency.last_run(name)
            states.append(
                VariantState(
                    variant=v,
                    classes=len(served.models.labels[v.labels]),
                    p50_seconds=latency.predict(name, 0.5, now),
                    p95_seconds=latency.predict(name, 0.95, now),
                    profiled_p50_seconds=latency.idle(name, 0.5),
                    profiled_p95_seconds=latency.idle(name, 0.95),
                    last_run_seconds_ago=None if last_run is None else now - last_run,
                    selected=served.selections[name],
                    frontier_seconds=served.models.frontier_seconds.get(name),
                )
            )
        return states

    def describe_unserved(self, served: Served) -> list[Candidate]:
        """The store's variants that are not served, each with why."""
        return [
            why_not_served(served.models, v)
            for v in served.models.store.manifest.variants
            if v.name not in served.models.variants
        ]

    def describe_plans(self, served: Served) -> list[PlanState]:
        """Every served cascade plan with its live counts."""
        states = []
        for name, plan in served.plans.items():
            counts = served.plan_counts[name]
            states.append(
                PlanState(plan, counts.runs, counts.unsure, counts.escalated, served.selections[name])
            )
        return states

    def slowdown(self, served: Served | None) -> float:
        """How much slower than profiled inferences run now (1: as profiled, or nothing ran)."""
        return 1.0 if served is None else served.pricer.latency.slowdown(time.perf_counter())


def why_not_served(models: ServedModels, variant: Variant) -> Candidate:
    """Why a variant of the store is not among ``models``' (it must not be)."""
    if variant.name in models.unavailable:
        return Candidate(variant, "unavailable", models.unavailable[variant.name])
    left = models.left.get(variant.name)
    if left is None:
        return Candidate(variant, "excluded")
    return Candidate(variant, left.reason, left.detail, models.frontier_seconds.get(variant.name))


def not_served(served: Served, name: str) -> str:
    """Why a request cannot pin ``name``, in words: not in the store, or not served here and why."""
    try:
        variant = served.models.store.manifest.variant(name)
    except KeyError:
        return f"no variant named {name!r}; GET /models lists them"
    why = why_not_served(served.models, variant)
    detail = "" if why.detail is None else f": {why.detail}"
    return (
        f"variant {name!r} is in the store but not served here ({why.reason}{detail}); "
        "GET /models lists those served"
    )
