"""The served set: the store's variants loaded, verified and priced, swapped as one on reload.

It loads off the event loop, retries a failed start-up load with backoff, says in words why it is
not serving yet, and hands a replaced set's memory back once the last request using it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_store import planning
from model_store.cascades import Plan
from model_store.manifest import Variant
from model_store.runner import VariantRunner
from model_store.store import StoreError
from service import errors
from service.core.calibration import Calibration
from service.core.latency import DecodeModel, LatencyModel
from service.observability import Metrics, VariantMetrics
from service.pricing import Pricer
from service.runtime.memory import release_free_memory
from service.runtime.models import ServedModels, load_models
from service.settings import Settings

log = logging.getLogger(__name__)

# Answers behind the calibrated margins' quantiles: a 0.99 quantile needs hundreds of them, and
# they age out so that a burst of late answers stops steering choices soon after it is over.
CALIBRATION_WINDOW = 1024
# Answers priced idle carry no load: all of the last minute's count (a sequential client's), so
# that the tail quantile a budget's bound comes from is a steady one.
CALIBRATION_IDLE_WINDOW = 4096
CALIBRATION_FRESH_SECONDS = 60.0
# The tiers' waits and total scores carry the load of the moment: kept for a minute, an
# overload's waits priced every variant but the smallest subnet out of the tight tiers for a
# minute after it had ended.
CALIBRATION_LOAD_FRESH_SECONDS = 10.0
LOAD_RETRY_FIRST_SECONDS = 1.0
LOAD_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class ServedVariant:
    """A served variant as any protocol may see it: its manifest entry, its labels and its output
    as the runtime declares it."""

    variant: Variant
    labels: tuple[str, ...]
    output_type: str  # the element type, such as ``tensor(float)``
    output_shape: tuple[Any, ...]  # dimensions: a number, or a name where it is free


@dataclass(frozen=True)
class Entry:
    """What a request needs of a variant that never changes while it is served: worked out once
    at load, not per request."""

    served: ServedVariant
    runner: VariantRunner
    metrics: VariantMetrics


@dataclass
class PlanCounts:
    """What a cascade plan did since it was loaded: how often it ran, how often its first stage
    was unsure (below the threshold), and how often the second stage then ran."""

    runs: int = 0
    unsure: int = 0
    escalated: int = 0


@dataclass
class Served:
    """Everything that is swapped as one on reload. ``plans``: the cascade plans made at load
    among the served variants (none when ``EDGEFIT_CASCADE`` is off), by name."""

    models: ServedModels
    pricer: Pricer
    entries: dict[str, Entry]
    plans: dict[str, Plan]
    selections: Counter[str] = field(default_factory=Counter)
    plan_counts: dict[str, PlanCounts] = field(default_factory=dict)


def _entry(runner: VariantRunner, labels: tuple[str, ...], metrics: VariantMetrics) -> Entry:
    variant = runner.variant
    (output,) = (o for o in runner.session.get_outputs() if o.name == variant.output_name)
    return Entry(ServedVariant(variant, labels, output.type, tuple(output.shape)), runner, metrics)


class ServedSet:
    def __init__(self, settings: Settings, metrics: Metrics, on_swap: Callable[[Served], None]) -> None:
        """``on_swap`` is called with each set as it is swapped in (the live table publishes it)."""
        self.settings = settings
        self.metrics = metrics
        self._on_swap = on_swap
        self._served: Served | None = None
        self._loading = asyncio.Lock()
        # Why the start-up load has not succeeded yet, in words; None while it runs.
        self.failure: str | None = None

    def current(self) -> Served | None:
        """The set being served (None before the first load)."""
        return self._served

    def require(self) -> Served:
        """The set being served; raises ``errors.NotReady`` before the first load."""
        # Draining only turns readiness off: requests already accepted are still answered.
        if self._served is None:
            raise errors.NotReady(
                "the server is starting (verifying and profiling models); retry shortly",
                retry_after_seconds=1,
            )
        return self._served

    @property
    def readiness(self) -> str:
        """Why the set is served or not, in words (draining aside)."""
        if self._served is not None:
            return "ready"
        if self.failure is not None:
            return f"the store cannot be served: {self.failure}"
        return "loading, verifying and profiling the store"

    def served_models(self) -> ServedModels | None:
        return self._served.models if self._served else None

    def unavailable(self) -> dict[str, str]:
        """The store's variants left out (a file failed verification or loading), and why."""
        return {} if self._served is None else dict(self._served.models.unavailable)

    def degraded(self) -> str | None:
        """What is left out and why, in one line; None if nothing (or nothing is served)."""
        return None if self._served is None else self._served.models.degraded()

    @property
    def names(self) -> Sequence[str]:
        return tuple(self._served.models.variants) if self._served else ()

    def variant(self, name: str) -> ServedVariant | None:
        """The served variant called ``name``, or None (also while not ready)."""
        entry = None if self._served is None else self._served.entries.get(name)
        return None if entry is None else entry.served

    async def load(self) -> None:
        """Load (or reload) the store off the event loop, then swap it in atomically.

        Loads are serialised: a reload waits for the one in progress, then reads the store as it
        is by then. Raises ``StoreError`` (or whatever else failed); the store being served stays
        in place if it does.
        """
        async with self._loading:
            previous = self.served_models()
            log.info("loading the store at %s", self.settings.store_dir)
            models = await asyncio.to_thread(load_models, self.settings, previous)
            plans = await asyncio.to_thread(self._plans, models)
            self.metrics.serve(models.variants.values(), models.unavailable, plans.values())
            self._served = self._serve(models, plans)
            self.failure = None
            self._on_swap(self._served)
            log.info("ready: serving %s", ", ".join(sorted(models.variants)))
            if models.unavailable:
                log.error(
                    "degraded: serving without %s; repair and reload", ", ".join(sorted(models.unavailable))
                )
            if previous is not None:
                self._release_when_unused(previous)
            del previous
            # The load's own garbage (file bytes, parsed graphs) is free now: give it back.
            await asyncio.to_thread(release_free_memory)

    def _plans(self, models: ServedModels) -> dict[str, Plan]:
        """The cascade plans among the served variants, at their inference latencies profiled
        here, from the answers the store recorded (``model_store.planning``); none when turned
        off. Plans are the device's: made where the store was built, their stages were that
        machine's frontier, and most were not served on another. Recorded answers that cannot
        be read cost the plans, not the store: it is served without them."""
        if not self.settings.cascade:
            return {}
        costs = {name: profile.p50 for name, profile in models.profiles.items()}
        try:
            planned = planning.plans(models.store, costs)
        except StoreError as exc:
            log.error("no cascade plans: %s", exc)
            return {}
        log.info("cascade plans: %s", ", ".join(p.name for p in planned) or "none beats the single variants")
        return {plan.name: plan for plan in planned}

    def _serve(self, models: ServedModels, plans: dict[str, Plan]) -> Served:
        window, fresh = self.settings.latency_window, self.settings.fresh_seconds
        pricer = Pricer(
            models.variants,
            LatencyModel(models.profiles, window=window, fresh_seconds=fresh),
            DecodeModel(models.decode_costs, window=window, fresh_seconds=fresh),
            Calibration(
                window=CALIBRATION_WINDOW,
                idle_window=CALIBRATION_IDLE_WINDOW,
                fresh_seconds=CALIBRATION_FRESH_SECONDS,
                load_fresh_seconds=CALIBRATION_LOAD_FRESH_SECONDS,
            ),
        )
        entries = {
            name: _entry(models.runners[name], models.labels[v.labels], self.metrics.variants[name])
            for name, v in models.variants.items()
        }
        return Served(models, pricer, entries, plans, plan_counts={name: PlanCounts() for name in plans})

    def _release_when_unused(self, models: ServedModels) -> None:
        """Hand the memory of ``models``' sessions back once the last request using them ends.

        Requests that were running at the swap still hold the old set; whichever drops the last
        reference frees it (on the loop or a worker), and the trim then runs on a thread.
        """
        loop = asyncio.get_running_loop()

        def released() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the process is ending
                loop.call_soon_threadsafe(loop.run_in_executor, None, release_free_memory)

        weakref.finalize(models, released)

    async def load_until_served(self) -> None:
        """The start-up load, retried until it succeeds (see README, "Start-up").

        Each failure is logged at once with its cause and kept for the readiness words; the next
        attempt follows after ``delay``, doubling up to ``LOAD_RETRY_MAX_SECONDS``, so a store
        that is being copied or mounted is picked up without a restart.
        """
        delay = LOAD_RETRY_FIRST_SECONDS
        while self._served is None:
            try:
                await self.load()
            except StoreError as exc:
                self.failure = str(exc)
                log.error("cannot serve: %s; retrying in %g s", exc, delay)
            except Exception:
                self.failure = "loading the store failed unexpectedly; the server log says why"
                log.exception("cannot serve: loading the store failed; retrying in %g s", delay)
            else:
                return
            await asyncio.sleep(delay)
            delay = min(LOAD_RETRY_MAX_SECONDS, 2 * delay)
