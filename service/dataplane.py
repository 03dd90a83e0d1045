"""The data plane: what the HTTP layer asks of the service, free of any protocol.

A facade over the rooms that do the work: the served set (``service.served_set``: load, verify,
reload), the choice of a variant (``service.selection`` over ``service.pricing``), the run on a
worker (``service.execution``) and the live table (``service.live_table``: feedback, re-probing).
It answers with facts (``service.results``); ``service.api`` shapes them for its protocols.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from service import errors
from service.cascades import Cascades
from service.core import schedule, selector
from service.execution import Execution, classify_job, tensor_job
from service.imaging import ImageHeader
from service.live_table import Candidate, LiveTable, PlanState, VariantState, not_served
from service.observability import Metrics
from service.results import Classification, classification, stage
from service.runtime.executor import Finished, InferenceExecutor
from service.selection import Chooser
from service.served_set import ServedSet, ServedVariant
from service.settings import Settings


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = InferenceExecutor(settings.workers, initial_service_seconds=0.01)
        self.table = LiveTable(settings, metrics, self.executor)
        self.served_set = ServedSet(settings, metrics, on_swap=self.table.publish)
        self.chooser = Chooser(settings, self.executor)
        self.execution = Execution(settings, metrics, self.executor)
        self.cascades = Cascades(settings, self.chooser, self.execution)
        self.draining = False

    # -- lifecycle and readiness ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.served_set.current() is not None and not self.draining

    @property
    def readiness(self) -> str:
        """Readiness in words, for /readyz, /v2 and the status page."""
        return "draining: the server is shutting down" if self.draining else self.served_set.readiness

    async def load(self) -> None:
        """Reload the store and swap it in; raises ``StoreError`` and keeps serving the old one."""
        await self.served_set.load()

    async def load_until_served(self) -> None:
        await self.served_set.load_until_served()

    async def keep_table_current(self) -> None:
        await self.table.keep_current(self.served_set.current)

    def shutdown(self) -> None:
        self.draining = True
        self.executor.shutdown()

    def unavailable(self) -> dict[str, str]:
        """The store's variants left out (a file failed verification or loading), and why."""
        return self.served_set.unavailable()

    def degraded(self) -> str | None:
        """What is left out and why, in one line; None if nothing."""
        return self.served_set.degraded()

    @property
    def variant_names(self) -> Sequence[str]:
        return self.served_set.names

    def variant(self, name: str) -> ServedVariant | None:
        """The served variant called ``name``, or None (also while not ready)."""
        return self.served_set.variant(name)

    # -- requests ------------------------------------------------------------------------------

    def admit(self) -> float:
        """The predicted queue wait, checked at the door before a body is read; raises
        ``errors.NotReady`` or ``errors.Overloaded`` (503) at once."""
        self.served_set.require()
        return self.chooser.admit()

    async def classify(
        self, image: bytes, header: ImageHeader, constraints: selector.Constraints, top: int, started: float
    ) -> Classification:
        """Choose a variant or a cascade plan, decode and classify on a worker. Raises
        ``ServiceError``."""
        budget = constraints.budget_seconds
        with self.chooser.in_flight(schedule.tier_name(budget)) as concurrent:
            served = self.served_set.require()
            if constraints.pinned is not None and constraints.pinned not in served.entries:
                raise errors.UnknownModel(not_served(served, constraints.pinned))
            self.table.saw_request()
            choice = self.chooser.choose(served, header, constraints, started, concurrent)
            name = choice.selection.name
            served.selections[name] += 1
            plan = served.plans.get(name)
            # A plan's choice is counted on its first stage: the variant it runs for sure.
            entry = served.entries[name if plan is None else plan.small]
            entry.metrics.selected[choice.selection.reason].inc()
            if plan is not None:
                return await self.cascades.run(served, plan, choice, image, header, top, started, constraints)
            run_options = ort.RunOptions()
            job = classify_job(image, entry.runner, top, self.settings.max_image_pixels, run_options)
            finished = await self.execution.run(
                job,
                choice.job,
                run_options,
                name,
                budget,
                shed_when_missed=choice.shed_when_missed(constraints.strict),
            )
            return classification(
                choice,
                budget,
                served,
                header,
                finished.value.best,
                [stage(entry, finished)],
                entry.served.variant.preprocessing,
            )

    def record(self, result: Classification, total_seconds: float) -> None:
        """What an answer teaches the live table and the metrics; ``total_seconds`` as the HTTP
        layer measured it (first byte to answer). Called once the answer is sent: none of this
        delays it."""
        self.table.record(result, total_seconds)

    async def infer_tensor(self, name: str, tensor: np.ndarray) -> Finished[np.ndarray]:
        """The raw output for cropped images, ``uint8 [N, H, W, 3]`` (the Open Inference Protocol
        path), from the store served now. Raises ``ServiceError`` (404 when a reload removed it)."""
        served = self.served_set.require()
        entry = served.entries.get(name)
        if entry is None:
            raise errors.NotFound(f"model {name!r} is not served")
        shape = entry.served.variant.input.shape
        if tensor.shape[1:] != shape[1:]:
            raise errors.InvalidParameter(
                f"model {name!r} was reloaded and now takes {list(shape)}; read its metadata again"
            )
        # Admitted again, as /classify is at its choice: the body may have taken long to arrive.
        self.chooser.admit()
        now = self.table.saw_request()
        scheduled = self.chooser.unbudgeted_job(served, name, len(tensor), now)
        run_options = ort.RunOptions()
        job = tensor_job(entry.runner, tensor, run_options)
        return await self.execution.run(job, scheduled, run_options, name, None)

    # -- introspection -------------------------------------------------------------------------

    def describe(self) -> list[VariantState]:
        """The served variants with their live latency figures and selection counts."""
        served = self.served_set.current()
        return [] if served is None else self.table.describe(served)

    def describe_unserved(self) -> list[Candidate]:
        """The store's variants that are not served, each with why."""
        served = self.served_set.current()
        return [] if served is None else self.table.describe_unserved(served)

    def describe_plans(self) -> list[PlanState]:
        """The served cascade plans with their recorded and live escalation."""
        served = self.served_set.current()
        return [] if served is None else self.table.describe_plans(served)

    def slowdown(self) -> float:
        """How much slower than profiled inferences run now (1: as profiled, or nothing ran)."""
        return self.table.slowdown(self.served_set.current())
