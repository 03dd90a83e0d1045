"""Running a confidence cascade plan for one request.

The first stage (the plan's small variant) decodes the image once, at the size the stage that
needs more pixels uses, and classifies it. Sure enough (its top score at least the plan's
threshold), it answers. Otherwise the second stage is priced again now, at the request's place in
the schedule (the queue may have moved while the first ran): if it still fits the budget it
classifies the same decoded image, resized to its input, and answers; if not, or if it is past
hope before a worker takes it, the first stage answers and the result says so (``out_of_time``).
"""

from __future__ import annotations

import contextlib

import onnxruntime as ort

from model_store.cascades import Plan
from service import errors
from service.core import selector
from service.execution import Execution, classify_job, next_stage_job
from service.imaging import ImageHeader
from service.results import Classification, Escalation, classification, stage
from service.selection import Choice, Chooser
from service.served_set import Served
from service.settings import Settings


class Cascades:
    def __init__(self, settings: Settings, chooser: Chooser, execution: Execution) -> None:
        self.settings = settings
        self.chooser = chooser
        self.execution = execution

    async def run(
        self,
        served: Served,
        plan: Plan,
        choice: Choice,
        image: bytes,
        header: ImageHeader,
        top: int,
        started: float,
        constraints: selector.Constraints,
    ) -> Classification:
        """The plan's answer for this image. Raises ``ServiceError``."""
        budget = constraints.budget_seconds
        small, big = served.entries[plan.small], served.entries[plan.big]
        decode_for = max(
            small.served.variant.preprocessing,
            big.served.variant.preprocessing,
            key=lambda p: p.resize_shorter,
        )
        run_options = ort.RunOptions()
        job = classify_job(image, small.runner, top, self.settings.max_image_pixels, run_options, decode_for)
        first = await self.execution.run(
            job,
            choice.job,
            run_options,
            plan.small,
            budget,
            shed_when_missed=choice.shed_when_missed(constraints.strict),
        )
        stages, best = [stage(small, first)], first.value.best
        escalation: Escalation = "answered"
        if best[0][1] < plan.threshold:
            second_job = self.chooser.escalation(served, plan.big, budget, started)
            escalation = "out_of_time"
            if second_job is not None:
                run_options = ort.RunOptions()
                job = next_stage_job(first.value.picture, big.runner, top, run_options)
                with contextlib.suppress(errors.Overloaded):  # shed past hope: the first answers
                    second = await self.execution.run(
                        job, second_job, run_options, plan.big, budget, shed_when_missed=True
                    )
                    stages.append(stage(big, second))
                    best = second.value.best
                    escalation = "escalated"
        return classification(choice, budget, served, header, best, stages, decode_for, plan, escalation)
