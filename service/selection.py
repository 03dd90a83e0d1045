"""Admission and the choice of a variant: where a request's job would sit in the schedule, what
each variant would cost there (``service.pricing``) and which one the selector takes.

It keeps the arrival mix (who has been asking, with what budgets), whose tiers the schedule keeps
capacity for, and how many requests of each tier are in the server at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from service import errors
from service.core import schedule, selector
from service.core.admission import predicted_wait, retry_after
from service.imaging import ImageHeader
from service.pricing import Place, Price
from service.runtime.executor import InferenceExecutor
from service.served_set import Served
from service.settings import Settings


@dataclass(frozen=True)
class Choice:
    selection: selector.Selection
    price: Price
    job: schedule.Job  # the job's place and predicted run time in the schedule
    fastest_point_seconds: float  # the point prediction of the fastest variant priced
    past_hope: bool  # the job could not be on time when it was queued (``schedule.missed``)
    idle: bool  # priced with nothing queued or running (``Place.idle``)

    def shed_when_missed(self, strict: bool) -> bool:
        """Whether its job is dropped (503) as soon as it is past hope rather than answered late:
        a strict request's, and one queued to wait for a worker, which answered late would take
        a worker from a request still on time. A job queued past hope, or one a worker could take
        at once (only its own run can make it late), waits last to answer late."""
        # ``wait_at_place`` is exactly 0 when a free worker takes the job as it joins.
        return strict or not (self.past_hope or self.price.candidate.wait_seconds == 0)


class Chooser:
    def __init__(self, settings: Settings, executor: InferenceExecutor) -> None:
        self.settings = settings
        self.executor = executor
        # The capacity the scheduler keeps for tight deadlines follows this mix, and how many of
        # each tier's requests were in the server at once (``_in_flight``, by tier name, from
        # selection to the end of the inference).
        self._mix = schedule.ArrivalMix(
            window=4 * settings.latency_window, fresh_seconds=settings.fresh_seconds
        )
        self._in_flight: Counter[str] = Counter()

    def admit(self) -> float:
        """The predicted queue wait; refuses at once (``errors.Overloaded``) past its bound."""
        ex = self.executor
        wait = predicted_wait(ex.ahead(time.perf_counter()), ex.running, ex.workers, ex.service_time.value)
        if wait > self.settings.max_queue_wait_seconds:
            raise errors.Overloaded(
                f"the server is at capacity (predicted queue wait {1000 * wait:.0f} ms); retry later",
                retry_after_seconds=retry_after(wait),
            )
        return wait

    @contextlib.contextmanager
    def in_flight(self, tier: str) -> Iterator[int]:
        """Counts a request of ``tier`` while it is here; yields how many are (itself included)."""
        self._in_flight[tier] += 1
        try:
            yield self._in_flight[tier]
        finally:
            self._in_flight[tier] -= 1

    def choose(
        self,
        served: Served,
        header: ImageHeader,
        constraints: selector.Constraints,
        started: float,
        concurrent: int,
    ) -> Choice:
        """The variant for this request, priced at its place in the schedule. Raises
        ``ServiceError`` (422 no variant allowed or able, 503 overloaded)."""
        now = time.perf_counter()
        # Admitted again although the door admitted it before reading the body: the upload may
        # have taken seconds, and the queue is judged as it is when this job joins it.
        wait = self.admit()
        budget = constraints.budget_seconds
        queue, busy = self.executor.snapshot(now)
        workers = self.executor.workers
        place = Place(
            schedule.dispatch_key(started, budget),
            schedule.ladder(workers, self._mix.tiers(now), budget),
            queue,
            busy,
            workers,
            budget is not None,
            self.executor.idle,
        )
        # A pinned request needs only its variant's price, and never cascades.
        names = tuple(served.entries) if constraints.pinned is None else (constraints.pinned,)
        elapsed = now - started
        prices = served.pricer.price(names, header, budget, place, now, elapsed)
        if constraints.cascade and constraints.pinned is None:
            for plan in served.plans.values():
                prices[plan.name] = served.pricer.price_plan(plan, prices, budget, place, now, elapsed)
        candidates = [p.candidate for p in prices.values()]
        # The tier keeps capacity for what its requests get from a worker free at once; its slack
        # counts from selection (the time already spent is not the kept workers' to save).
        wanted = selector.unhurried(candidates, constraints, elapsed_seconds=elapsed)
        service = min(c.predicted_seconds for c in candidates) if wanted is None else wanted.predicted_seconds
        self._mix.add(now, budget, math.inf if budget is None else budget - service, concurrent)
        try:
            choice = selector.select(
                candidates,
                constraints,
                elapsed_seconds=elapsed,
                backlog_seconds=schedule.backlog(queue, workers, now, place.key),
                contended=not place.idle,
            )
        except selector.NoVariantAllowed as exc:
            raise errors.NoVariantAllowed(str(exc)) from None
        except selector.BudgetUnmeetable as exc:
            raise errors.BudgetUnmeetable(str(exc)) from None
        except (selector.BudgetUnmeetableNow, selector.Saturated) as exc:
            raise errors.Overloaded(str(exc), retry_after_seconds=retry_after(wait)) from None
        price = prices[choice.name]
        fastest = min(p.point_seconds for p in prices.values())
        job = place.job(price.service_seconds, price.point_seconds)
        return Choice(choice, price, job, fastest, schedule.missed(job, now), place.idle)

    def escalation(
        self, served: Served, name: str, budget: float | None, started: float
    ) -> schedule.Job | None:
        """A cascade's second stage on ``name``, priced now at its place in the schedule (the
        request's deadline): its job if it still fits the budget, else None."""
        now = time.perf_counter()
        queue, busy = self.executor.snapshot(now)
        run = served.pricer.inference_seconds(name, now, budget)
        job = self._job(started, budget, run, now)
        if budget is None:
            return job
        wait = schedule.wait_at_place(job, queue, busy, now)
        wait += served.pricer.calibration.wait_margin(budget, now)
        return job if now - started + wait + run <= budget else None

    def unbudgeted_job(self, served: Served, name: str, images: int, now: float) -> schedule.Job:
        """A job without a budget (``/v2``): it queues after budgeted work and keeps the capacity
        their tiers need."""
        return self._job(now, None, images * served.pricer.inference_seconds(name, now), now)

    def _job(self, started: float, budget: float | None, run_seconds: float, now: float) -> schedule.Job:
        """A job of a request that started at ``started``: keyed by its deadline, keeping the
        capacity tighter tiers need."""
        return schedule.Job(
            schedule.dispatch_key(started, budget),
            run_seconds,
            schedule.ladder(self.executor.workers, self._mix.tiers(now), budget),
            budget is not None,
        )
