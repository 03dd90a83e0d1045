"""The data plane: admission, selection and execution of classifications, free of HTTP.

It owns what a served store needs at run time (sessions, latency table, executor) and swaps it
atomically on reload. Latency bookkeeping happens on the event loop thread, after each job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from model_store import imaging
from model_store.manifest import Variant, depth_tag
from model_store.runner import VariantRunner, top_k
from model_store.store import StoreError
from service import errors
from service.core import schedule, selector
from service.core.admission import predicted_wait, retry_after
from service.core.calibration import Calibration
from service.core.latency import DecodeModel, DecodeWork, LatencyModel
from service.observability import Metrics, VariantMetrics
from service.pricing import Place, Price, Pricer
from service.runtime.executor import Finished, InferenceExecutor
from service.runtime.memory import release_free_memory
from service.runtime.models import ServedModels, load_models
from service.runtime.profiler import decode_work
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Answers behind the calibrated margins' quantiles: a 0.99 quantile needs hundreds of them, and
# they age out so that a burst of late answers stops steering choices soon after it is over.
CALIBRATION_WINDOW = 1024
CALIBRATION_FRESH_SECONDS = 60.0
# The v2 path's and the probes' place in the schedule: their inference at this quantile.
FIT_QUANTILE = 0.95
REPROBE_PERIOD_SECONDS = 1.0
LOAD_RETRY_FIRST_SECONDS = 1.0
LOAD_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    variant: Variant
    model: dict[str, Any]  # the answer's ``model`` object (shared, never modified)
    variant_header: bytes  # the ``X-Model-Variant`` value
    metrics: VariantMetrics
    reason: selector.Reason
    predicted_seconds: float  # time spent before choosing + predicted wait + the variant's price
    margin_seconds: float  # the price's calibrated margins (service and wait)
    chosen_after_seconds: float  # time spent before choosing
    predicted_wait_seconds: float
    point_seconds: float  # the price's point prediction of the service
    predictions: list[Prediction]
    queue_seconds: float
    decode_seconds: float
    inference_seconds: float
    # For ``DataPlane.record``, after the answer is sent: the store that answered it, and what
    # its decode cost is predicted from.
    served: _Served
    image_format: str
    decode_work: DecodeWork


@dataclass(frozen=True)
class _Static:
    """What a request needs of a variant that never changes while it is served: worked out once
    at load, not per request."""

    variant: Variant
    runner: VariantRunner
    labels: tuple[str, ...]
    model: dict[str, Any]
    header: bytes
    metrics: VariantMetrics


@dataclass
class _Served:
    """Everything that is swapped as one on reload."""

    models: ServedModels
    pricer: Pricer
    static: dict[str, _Static]
    selections: Counter[str] = field(default_factory=Counter)


def _model_doc(v: Variant) -> dict[str, Any]:
    return {
        "name": v.name,
        "family": v.family,
        "resolution": v.resolution,
        "precision": v.precision,
        "top1": v.top1,
        "top1_source": v.top1_source,
        "size_bytes": v.size_bytes,
    }


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = InferenceExecutor(settings.workers, initial_service_seconds=0.01)
        self._served: _Served | None = None
        # Who has been asking, with what budgets: the capacity the scheduler keeps for tight
        # deadlines follows this mix, and how many of each tier's requests were in the server at
        # once (``_in_flight``, by tier name, from selection to the end of the inference).
        self._mix = schedule.ArrivalMix(
            window=4 * settings.latency_window, fresh_seconds=settings.fresh_seconds
        )
        self._in_flight: Counter[str] = Counter()
        self._last_request = 0.0
        # When the heap was last handed back to the system (see ``_refresh_table``).
        self._trimmed = 0.0
        self._loading = asyncio.Lock()
        self.draining = False
        # Why the start-up load has not succeeded yet (in words for /readyz, /v2 and the status
        # page); None while it runs.
        self.failure: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._served is not None and not self.draining

    @property
    def readiness(self) -> str:
        """Readiness in words, for /readyz, /v2 and the status page."""
        if self.draining:
            return "draining: the server is shutting down"
        if self._served is not None:
            return "ready"
        if self.failure is not None:
            return f"the store cannot be served: {self.failure}"
        return "loading, verifying and profiling the store"

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
            window = self.settings.latency_window
            fresh = self.settings.fresh_seconds
            self.metrics.serve(models.variants.values(), models.unavailable)
            self._served = _Served(
                models=models,
                pricer=Pricer(
                    models.variants,
                    LatencyModel(models.profiles, window=window, fresh_seconds=fresh),
                    DecodeModel(models.decode_costs, window=window, fresh_seconds=fresh),
                    Calibration(window=CALIBRATION_WINDOW, fresh_seconds=CALIBRATION_FRESH_SECONDS),
                ),
                static={
                    name: _Static(
                        variant=v,
                        runner=models.runners[name],
                        labels=models.labels[v.labels],
                        model=_model_doc(v),
                        header=name.encode(),
                        metrics=self.metrics.variants[name],
                    )
                    for name, v in models.variants.items()
                },
            )
            self.failure = None
            self._publish_predictions()
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

        Each failure is logged at once with its cause and shown in ``/readyz``'s detail; the
        next attempt follows after ``delay``, doubling up to ``LOAD_RETRY_MAX_SECONDS``, so a
        store that is being copied or mounted is picked up without a restart.
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

    def _require(self) -> _Served:
        # Draining only turns readiness off: requests already accepted are still answered.
        if self._served is None:
            raise errors.NotReady(
                "the server is starting (verifying and profiling models); retry shortly",
                retry_after_seconds=1,
            )
        return self._served

    def served_models(self) -> ServedModels | None:
        """The set being served (None before the first load)."""
        return self._served.models if self._served else None

    def unavailable(self) -> dict[str, str]:
        """The store's variants left out (a file failed verification or loading), and why."""
        return {} if self._served is None else dict(self._served.models.unavailable)

    @property
    def variant_names(self) -> Sequence[str]:
        return tuple(self._served.models.variants) if self._served else ()

    # -- admission and selection --------------------------------------------------------------

    def _queue_wait(self) -> float:
        ex = self.executor
        return predicted_wait(ex.queued, ex.running, ex.workers, ex.service_time.value)

    def admit(self) -> float:
        """The predicted queue wait; refuses at once (503) past its bound.

        Called before reading a body, and again when choosing a variant.
        """
        self._require()
        wait = self._queue_wait()
        if wait > self.settings.max_queue_wait_seconds:
            raise errors.Overloaded(
                f"the server is at capacity (predicted queue wait {1000 * wait:.0f} ms); retry later",
                retry_after_seconds=retry_after(wait),
            )
        return wait

    def _select(
        self,
        served: _Served,
        header: imaging.ImageHeader,
        constraints: selector.Constraints,
        started: float,
        concurrent: int,
    ) -> tuple[selector.Selection, Price, schedule.Job]:
        now = time.perf_counter()
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
        )
        # A pinned request needs only its variant's price.
        names = tuple(served.static) if constraints.pinned is None else (constraints.pinned,)
        prices = served.pricer.price(names, header, budget, place, now)
        candidates = [p.candidate for p in prices.values()]
        # The tier keeps capacity for what its requests get from a worker free at once; its slack
        # counts from selection (the time already spent is not the kept workers' to save).
        elapsed = now - started
        wanted = selector.unhurried(candidates, constraints, elapsed_seconds=elapsed)
        service = min(c.predicted_seconds for c in candidates) if wanted is None else wanted.predicted_seconds
        self._mix.add(now, budget, math.inf if budget is None else budget - service, concurrent)
        try:
            choice = selector.select(
                candidates,
                constraints,
                elapsed_seconds=elapsed,
                backlog_seconds=schedule.backlog(queue, workers),
            )
        except selector.NoVariantAllowed as exc:
            raise errors.NoVariantAllowed(str(exc)) from None
        except selector.BudgetUnmeetable as exc:
            raise errors.BudgetUnmeetable(str(exc)) from None
        except selector.BudgetUnmeetableNow as exc:
            raise errors.Overloaded(str(exc), retry_after_seconds=retry_after(wait)) from None
        price = prices[choice.name]
        return choice, price, schedule.Job(place.key, price.service_seconds, place.limits)

    # -- execution -----------------------------------------------------------------------------

    async def classify(
        self,
        image: bytes,
        header: imaging.ImageHeader,
        constraints: selector.Constraints,
        top: int,
        started: float,
    ) -> Classification:
        """Choose a variant, decode and classify on a worker. Raises ``ServiceError``."""
        with self._in_flight_of(schedule.tier_name(constraints.budget_seconds)) as concurrent:
            served = self._require()
            if constraints.pinned is not None and constraints.pinned not in served.models.variants:
                raise errors.UnknownModel(f"no variant named {constraints.pinned!r}; GET /models lists them")
            self._last_request = time.perf_counter()
            choice, price, scheduled = self._select(served, header, constraints, started, concurrent)
            static = served.static[choice.name]
            variant, runner = static.variant, static.runner
            served.selections[choice.name] += 1
            static.metrics.selected[choice.reason].inc()
            max_pixels = self.settings.max_image_pixels
            run_options = ort.RunOptions()

            def job() -> tuple[float, float, list[tuple[int, float]]]:
                t0 = time.perf_counter()
                tensor = imaging.load_tensor(image, variant.preprocessing, max_pixels)
                t1 = time.perf_counter()
                logits = runner.infer(tensor, run_options)
                t2 = time.perf_counter()
                return t1 - t0, t2 - t1, top_k(logits, top)

            try:
                budget = constraints.budget_seconds
                finished = await self._run(job, scheduled, run_options, choice.name, budget)
            except imaging.ImageTooLarge as exc:
                raise errors.ImageTooLarge(str(exc)) from None
            except imaging.ImageError as exc:
                raise errors.InvalidImage(str(exc)) from None
            decode_s, inference_s, best = finished.value
            names = static.labels
            return Classification(
                variant=variant,
                model=static.model,
                variant_header=static.header,
                metrics=static.metrics,
                reason=choice.reason,
                predicted_seconds=choice.predicted_seconds,
                margin_seconds=price.candidate.predicted_seconds - price.point_seconds,
                chosen_after_seconds=choice.predicted_seconds
                - price.candidate.wait_seconds
                - price.candidate.predicted_seconds,
                predicted_wait_seconds=price.candidate.wait_seconds,
                point_seconds=price.point_seconds,
                predictions=[Prediction(i, names[i], score) for i, score in best],
                queue_seconds=finished.queue_seconds,
                decode_seconds=decode_s,
                inference_seconds=inference_s,
                served=served,
                image_format=header.format,
                decode_work=decode_work(header, variant.preprocessing),
            )

    @contextlib.contextmanager
    def _in_flight_of(self, tier: str) -> Iterator[int]:
        """Counts a request of ``tier`` while it is here; yields how many are (itself included)."""
        self._in_flight[tier] += 1
        try:
            yield self._in_flight[tier]
        finally:
            self._in_flight[tier] -= 1

    def record(self, result: Classification, total_seconds: float, budget_seconds: float | None) -> None:
        """What an answer teaches the latency table and the metrics; ``total_seconds`` as the HTTP
        layer measured it (first byte to answer). Called once the answer is sent: none of this
        delays it."""
        now = time.perf_counter()
        result.served.pricer.learn(
            result.variant.name,
            budget_seconds,
            image_format=result.image_format,
            work=result.decode_work,
            decode_seconds=result.decode_seconds,
            inference_seconds=result.inference_seconds,
            service_residual=total_seconds
            - result.chosen_after_seconds
            - result.queue_seconds
            - result.point_seconds,
            wait_error=result.queue_seconds - result.predicted_wait_seconds,
            now=now,
        )
        metrics = result.metrics
        metrics.inference_duration.observe(result.inference_seconds)
        self.metrics.decode_duration.observe(result.decode_seconds)
        metrics.request_duration.observe(total_seconds)
        if budget_seconds is not None:
            (metrics.budget_met if total_seconds <= budget_seconds else metrics.budget_missed).inc()
            self.metrics.slack.observe(budget_seconds - total_seconds)

    async def _run(
        self,
        work: Callable[[], T],
        scheduled: schedule.Job,
        run_options: ort.RunOptions,
        name: str,
        budget: float | None,
    ) -> Finished[T]:
        """``work`` on a worker, within the hard inference timeout; counts its queue wait."""
        future = self.executor.submit(work, scheduled)
        self.metrics.queue_depth.set(self.executor.queued)
        try:
            async with asyncio.timeout(self.settings.inference_timeout_seconds):
                # Shielded: a timed-out job still runs to its (terminated) end on its worker.
                finished = await asyncio.shield(future)
        except TimeoutError:
            # onnxruntime checks this flag between kernels: the worker is freed, not leaked.
            run_options.terminate = True
            raise errors.InferenceTimeout(
                f"inference on {name} ran past {self.settings.inference_timeout_seconds:g} s and was aborted"
            ) from None
        finally:
            self.metrics.queue_depth.set(self.executor.queued)
        self.metrics.queue_wait.observe(finished.queue_seconds)
        tier = schedule.tier_name(budget)
        self.metrics.queue_wait_in_tier[tier].observe(finished.queue_seconds)
        return finished

    def runner(self, name: str) -> VariantRunner | None:
        """The served variant called ``name``, or None (also while not ready)."""
        served = self._served
        return None if served is None else served.models.runners.get(name)

    async def infer_tensor(self, name: str, tensor: np.ndarray) -> Finished[np.ndarray]:
        """The raw output for cropped images, ``uint8 [N, H, W, 3]`` (the Open Inference Protocol
        path), from the store served now. Raises ``ServiceError`` (404 when a reload removed it)."""
        served = self._require()
        runner = served.models.runners.get(name)
        if runner is None:
            raise errors.NotFound(f"model {name!r} is not served")
        variant = runner.variant
        if tensor.shape[1:] != variant.input.shape[1:]:
            raise errors.InvalidParameter(
                f"model {name!r} was reloaded and now takes {list(variant.input.shape)}; "
                "read its metadata again"
            )
        self.admit()
        self._last_request = now = time.perf_counter()
        # No budget: it queues after budgeted work and keeps the capacity their tiers need.
        scheduled = schedule.Job(
            schedule.dispatch_key(now, None),
            len(tensor) * served.pricer.latency.predict(name, FIT_QUANTILE, now),
            schedule.ladder(self.executor.workers, self._mix.tiers(now), None),
        )
        run_options = ort.RunOptions()

        def job() -> np.ndarray:
            outputs = runner.session.run([variant.output_name], {variant.input.name: tensor}, run_options)
            return np.asarray(outputs[0])

        return await self._run(job, scheduled, run_options, name, None)

    # -- the live table ------------------------------------------------------------------------

    def _publish_predictions(self) -> None:
        served = self._served
        if served is None:
            return
        now = time.perf_counter()
        gauge = self.metrics.predicted_latency
        slowdown = served.pricer.latency.slowdown(now)
        for name in served.models.variants:
            gauge.labels(name, "0.5").set(served.pricer.latency.predict(name, 0.5, now, slowdown))
            gauge.labels(name, "0.95").set(served.pricer.latency.predict(name, 0.95, now, slowdown))

    async def keep_table_current(self) -> None:
        """Forever: refresh the published table; when idle, re-probe the stalest variant.

        A failing round is logged and the next one runs as usual: the table must not silently
        stop following the machine.
        """
        while True:
            await asyncio.sleep(REPROBE_PERIOD_SECONDS)
            try:
                await self._refresh_table()
            except Exception:
                log.exception(
                    "refreshing the live latency table failed; trying again in %g s", REPROBE_PERIOD_SECONDS
                )

    async def _refresh_table(self) -> None:
        served = self._served
        if served is None:
            return
        self._publish_predictions()
        now = time.perf_counter()
        idle = (
            self.executor.queued == 0
            and self.executor.running == 0
            and now - self._last_request > REPROBE_PERIOD_SECONDS
        )
        if not idle:
            return
        if self._trimmed < self._last_request:
            # Traffic leaves free heap in every worker's malloc arena (each inference's
            # intermediate tensors come from malloc): once idle, hand it back (about 25 MB for
            # the default store on 2 workers, DEVELOPERS.md "Where the memory goes").
            self._trimmed = now
            await asyncio.to_thread(release_free_memory)
        stale = [
            (served.pricer.latency.last_run(n) or 0.0, n)
            for n in served.models.variants
            if now - (served.pricer.latency.last_run(n) or 0.0) > self.settings.reprobe_idle_seconds
        ]
        if stale:
            _, name = min(stale)
            await self._probe(served, name)

    async def _probe(self, served: _Served, name: str) -> None:
        runner = served.models.runners[name]
        size = runner.variant.resolution
        tensor = np.zeros((1, size, size, 3), dtype=np.uint8)

        def job() -> float:
            started = time.perf_counter()
            runner.infer(tensor)
            return time.perf_counter() - started

        now = time.perf_counter()
        # Runs only on an idle server; last in line should anything arrive meanwhile.
        probe = schedule.Job(schedule.dispatch_key(now, None), served.pricer.latency.idle(name, FIT_QUANTILE))
        finished = await self.executor.run(job, probe)
        served.pricer.latency.observe(name, finished.value, time.perf_counter())

    # -- introspection -------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """``GET /models``: manifest fields plus the live table and selection counts."""
        served = self._served
        if served is None:
            return []
        now = time.perf_counter()
        return [
            {
                **v.model_dump(mode="json", exclude={"file"}),
                "classes": len(served.models.labels[v.labels]),
                # "full", or "d17" for a subnet keeping 17 of its family's blocks.
                "depth": depth_tag(v.subnet),
                "kept_block_count": None if v.subnet is None else len(v.subnet.kept_blocks),
                "latency_ms": {
                    "p50": round(1000 * served.pricer.latency.predict(n, 0.5, now), 3),
                    "p95": round(1000 * served.pricer.latency.predict(n, 0.95, now), 3),
                    "profiled_p50": round(1000 * served.pricer.latency.idle(n, 0.5), 3),
                    "profiled_p95": round(1000 * served.pricer.latency.idle(n, 0.95), 3),
                    "last_run_seconds_ago": _age(served.pricer.latency.last_run(n), now),
                },
                "selected": served.selections[n],
            }
            for n, v in served.models.variants.items()
        ]

    def slowdown(self) -> float:
        """How much slower than profiled inferences run now (1: as profiled, or nothing ran)."""
        served = self._served
        return 1.0 if served is None else served.pricer.latency.slowdown(time.perf_counter())

    def shutdown(self) -> None:
        self.draining = True
        self.executor.shutdown()


def _age(then: float | None, now: float) -> float | None:
    return None if then is None else round(now - then, 3)
