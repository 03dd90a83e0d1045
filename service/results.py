"""What the data plane answers with: facts in seconds, free of any protocol's shape.

``service.api`` turns them into JSON documents and headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from model_store.cascades import Plan
from model_store.manifest import Preprocessing, Variant
from service.core import selector
from service.core.latency import DecodeWork
from service.execution import Classified
from service.imaging import ImageHeader
from service.observability import VariantMetrics
from service.runtime.executor import Finished
from service.runtime.profiler import decode_work
from service.selection import Choice
from service.served_set import Entry, Served

# What a cascade's first stage led to: its answer (sure enough), the second stage's, or its own
# because the second no longer fit the budget when the first ended.
Escalation = Literal["answered", "escalated", "out_of_time"]


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Stage:
    """One variant's run for a request (a cascade has two; the last answered)."""

    variant: Variant
    top_score: float
    queue_seconds: float
    decode_seconds: float  # decoding (the first stage) and resizing to the variant's input
    inference_seconds: float
    metrics: VariantMetrics  # the variant's metric children


def stage(entry: Entry, finished: Finished[Classified]) -> Stage:
    """The stage ``entry``'s variant ran, as it finished on a worker."""
    done = finished.value
    return Stage(
        entry.served.variant,
        done.best[0][1],
        finished.queue_seconds,
        done.decode_seconds,
        done.inference_seconds,
        entry.metrics,
    )


@dataclass(frozen=True)
class Classification:
    reason: selector.Reason
    budget_seconds: float | None  # the request's budget, if it gave one
    predicted_seconds: float  # time spent before choosing + predicted wait + the choice's price
    margin_seconds: float  # the price's calibrated margins (service and wait)
    chosen_after_seconds: float  # time spent before choosing
    predicted_wait_seconds: float
    point_seconds: float  # the price's point prediction of the service (of the stages that ran)
    fastest_point_seconds: float  # the same for the fastest variant it was chosen among
    past_hope: bool  # queued when it could no longer be on time: its wait was nobody's prediction
    idle: bool  # priced with nothing queued or running
    predictions: list[Prediction]
    stages: tuple[Stage, ...]
    # For ``DataPlane.record``, after the answer is sent: the set that answered it and what its
    # decode cost is predicted from.
    served: Served
    image_format: str
    decode_work: DecodeWork
    plan: Plan | None = None  # the cascade plan that ran, if one did
    escalation: Escalation | None = None

    @property
    def variant(self) -> Variant:
        """The variant that answered."""
        return self.stages[-1].variant

    @property
    def metrics(self) -> VariantMetrics:
        return self.stages[-1].metrics

    @property
    def queue_seconds(self) -> float:
        return sum(s.queue_seconds for s in self.stages)

    @property
    def decode_seconds(self) -> float:
        return sum(s.decode_seconds for s in self.stages)

    @property
    def inference_seconds(self) -> float:
        return sum(s.inference_seconds for s in self.stages)

    def budget_met(self, total_seconds: float) -> bool | None:
        """Whether an answer ``total_seconds`` after the first byte met the budget (None: none)."""
        return None if self.budget_seconds is None else total_seconds <= self.budget_seconds


def classification(
    choice: Choice,
    budget_seconds: float | None,
    served: Served,
    header: ImageHeader,
    best: Sequence[tuple[int, float]],
    stages: Sequence[Stage],
    decoded_for: Preprocessing,
    plan: Plan | None = None,
    escalation: Escalation | None = None,
) -> Classification:
    """The facts of an answer: ``best`` (class id, score) from the last of ``stages``, the image
    decoded once for ``decoded_for``."""
    price, selection = choice.price, choice.selection
    labels = served.entries[stages[-1].variant.name].served.labels
    return Classification(
        reason=selection.reason,
        budget_seconds=budget_seconds,
        predicted_seconds=selection.predicted_seconds,
        margin_seconds=price.candidate.predicted_seconds - price.point_seconds,
        chosen_after_seconds=selection.predicted_seconds
        - price.candidate.wait_seconds
        - price.candidate.predicted_seconds,
        predicted_wait_seconds=price.candidate.wait_seconds,
        point_seconds=price.point_seconds + (price.escalation_point_seconds if len(stages) > 1 else 0.0),
        fastest_point_seconds=choice.fastest_point_seconds,
        past_hope=choice.past_hope,
        idle=choice.idle,
        predictions=[Prediction(i, labels[i], score) for i, score in best],
        stages=tuple(stages),
        served=served,
        image_format=header.format,
        decode_work=decode_work(header, decoded_for),
        plan=plan,
        escalation=escalation,
    )
