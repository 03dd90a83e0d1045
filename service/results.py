"""What the data plane answers with: facts in seconds, free of any protocol's shape.

``service.api`` turns them into JSON documents and headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.manifest import Variant
from service.core import selector
from service.core.latency import DecodeWork
from service.observability import VariantMetrics
from service.served_set import Served


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    variant: Variant
    reason: selector.Reason
    budget_seconds: float | None  # the request's budget, if it gave one
    predicted_seconds: float  # time spent before choosing + predicted wait + the variant's price
    margin_seconds: float  # the price's calibrated margins (service and wait)
    chosen_after_seconds: float  # time spent before choosing
    predicted_wait_seconds: float
    point_seconds: float  # the price's point prediction of the service
    predictions: list[Prediction]
    queue_seconds: float
    decode_seconds: float
    inference_seconds: float
    # For ``DataPlane.record``, after the answer is sent: the set that answered it, the variant's
    # metric children, and what its decode cost is predicted from.
    served: Served
    metrics: VariantMetrics
    image_format: str
    decode_work: DecodeWork

    def budget_met(self, total_seconds: float) -> bool | None:
        """Whether an answer ``total_seconds`` after the first byte met the budget (None: none)."""
        return None if self.budget_seconds is None else total_seconds <= self.budget_seconds
