"""Prometheus metrics (names are a contract: CONTRACT.md) and the structured access log.

Each app owns its registry, so tests never share metric state. Label values come only from the
manifest and fixed enums; everything a request could make up is folded into ``none``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from model_store.cascades import Plan
from model_store.manifest import Variant
from service.core.schedule import TIER_NAMES

# Seconds; edges at the budget tiers people use on the edge (the client's defaults lack 15/20 ms).
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
# Budget minus total: negative is late. Resolves "how late" and "how much room was left".
SLACK_BUCKETS = (
    -0.1,
    -0.05,
    -0.02,
    -0.01,
    -0.005,
    -0.002,
    0.0,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
)
OUTCOMES = ("ok", "client_error", "shed", "error")
REASONS = ("best_fit", "pinned", "fallback", "no_budget", "contention")
NO_VARIANT = "none"
CASCADE_OUTCOMES = ("answered", "escalated")
# The inference endpoints, as the ``endpoint`` label of the per-endpoint series.
ENDPOINTS = ("classify", "v2_infer")

access_log = logging.getLogger("edgefit.access")


@dataclass(frozen=True)
class VariantMetrics:
    """One variant's metric children."""

    request_duration: Histogram
    inference_duration: Histogram
    budget_met: Counter
    budget_missed: Counter
    selected: dict[str, Counter]


@dataclass(frozen=True)
class _Declare:
    """Metric constructors bound to one registry."""

    registry: CollectorRegistry

    def counter(self, name: str, documentation: str, labels: Sequence[str]) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        declare = _Declare(self.registry)
        counter, histogram = declare.counter, declare.histogram
        self.requests = counter(
            "edgefit_requests", "Classification requests by variant and outcome.", ["variant", "outcome"]
        )
        self.request_duration = histogram(
            "edgefit_request_duration_seconds", "Server-side request time, first byte to answer.", ["variant"]
        )
        self.inference_duration = histogram(
            "edgefit_inference_duration_seconds", "onnxruntime inference time.", ["variant"]
        )
        self.decode_duration = histogram(
            "edgefit_decode_duration_seconds", "Image decode and preprocessing time."
        )
        self.queue_wait = histogram(
            "edgefit_queue_wait_seconds", "Time from admission to a worker starting the job."
        )
        # Beside the contract's unlabelled histogram: who waits, by budget tier (a fixed set).
        self.queue_wait_by_tier = histogram(
            "edgefit_queue_wait_by_tier_seconds",
            "Time from admission to a worker starting the job, by the request's budget tier.",
            ["tier"],
        )
        self.queue_wait_in_tier = {tier: self.queue_wait_by_tier.labels(tier) for tier in TIER_NAMES}
        self.budget = counter(
            "edgefit_budget",
            "Answered requests that carried a budget, by whether it was met.",
            ["variant", "result"],
        )
        self.slack = histogram(
            "edgefit_budget_slack_seconds",
            "Budget minus server-side total (negative: late).",
            buckets=SLACK_BUCKETS,
        )
        self.selected = counter(
            "edgefit_variant_selected", "Variant choices by reason.", ["variant", "reason"]
        )
        self.cascade = counter(
            "edgefit_cascade",
            "Confidence cascades run, by first stage: answered by it, or escalated to the second.",
            ["variant", "outcome"],
        )
        self._gauges(declare)
        self._endpoint_series(declare)
        self._outcomes = {
            (NO_VARIANT, outcome): self.requests.labels(NO_VARIANT, outcome)
            for outcome in ("client_error", "shed", "error")
        }
        self.variants: dict[str, VariantMetrics] = {}

    def _gauges(self, declare: _Declare) -> None:
        """The live table, the variants served and left out, and the server's load and readiness."""
        gauge = declare.gauge
        self.predicted_latency = gauge(
            "edgefit_variant_predicted_latency_seconds",
            "The live latency table: predicted inference time quantiles per variant.",
            ["variant", "quantile"],
        )
        self.variant_info = gauge(
            "edgefit_variant_info",
            "Variants served, with their manifest facts.",
            ["variant", "family", "resolution", "precision", "top1"],
        )
        self.inflight = gauge("edgefit_inflight_requests", "Classification requests being handled.")
        self.queue_depth = gauge("edgefit_queue_depth", "Jobs waiting for an inference worker.")
        self.ready = gauge("edgefit_ready", "1 when ready to serve (as /readyz), else 0.")
        self.unavailable = gauge(
            "edgefit_variant_unavailable",
            "1 for a variant of the store left out (its file failed verification or loading), else 0.",
            ["variant"],
        )

    def _endpoint_series(self, declare: _Declare) -> None:
        """Beside the contract's per-variant series, whose label sets stay as they are: which
        endpoint the inference requests came through (a fixed set)."""
        self.endpoint_requests = declare.counter(
            "edgefit_endpoint_requests",
            "Inference requests by endpoint and outcome.",
            ["endpoint", "outcome"],
        )
        self.endpoint_duration = declare.histogram(
            "edgefit_endpoint_request_duration_seconds",
            "Server-side request time by endpoint, first byte to answer.",
            ["endpoint"],
        )
        # Children are resolved once, here and in ``serve``: ``labels()`` takes a lock and builds
        # a key on every call, which the hot path need not pay.
        self.endpoint_durations = {e: self.endpoint_duration.labels(e) for e in ENDPOINTS}
        self.endpoint_outcomes = {
            (e, outcome): self.endpoint_requests.labels(e, outcome) for e in ENDPOINTS for outcome in OUTCOMES
        }

    def outcome(self, variant: str, outcome: str) -> Counter:
        """The ``edgefit_requests_total`` child of this variant and outcome."""
        return self._outcomes[(variant, outcome)]

    def serve(
        self, variants: Iterable[Variant], unavailable: Iterable[str] = (), plans: Iterable[Plan] = ()
    ) -> None:
        """Pre-initialise every label set of these variants and cascade ``plans``, and describe
        the variants; mark the store's ``unavailable`` variants."""
        for plan in plans:
            for outcome in CASCADE_OUTCOMES:
                self.cascade.labels(plan.small, outcome)
        self.variant_info.clear()
        self.unavailable.clear()
        for name in unavailable:
            self.unavailable.labels(name).set(1)
        for v in variants:
            for outcome in OUTCOMES:
                self._outcomes[(v.name, outcome)] = self.requests.labels(v.name, outcome)
            self.variants[v.name] = VariantMetrics(
                request_duration=self.request_duration.labels(v.name),
                inference_duration=self.inference_duration.labels(v.name),
                budget_met=self.budget.labels(v.name, "met"),
                budget_missed=self.budget.labels(v.name, "missed"),
                selected={reason: self.selected.labels(v.name, reason) for reason in REASONS},
            )
            top1 = "" if v.top1 is None else f"{v.top1:.4f}"
            self.variant_info.labels(v.name, v.family, str(v.resolution), v.precision, top1).set(1)
            self.unavailable.labels(v.name).set(0)


def configure_access_log() -> None:
    """Access lines go to stdout as bare JSON objects, one a line (nothing before the ``{``), so
    log shippers parse them whole; every other log line goes to stderr with its level."""
    if access_log.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.propagate = False


def log_access(fields: dict[str, Any]) -> None:
    """One JSON line per request on the ``edgefit.access`` logger (callers check that it is enabled
    before gathering the fields)."""
    access_log.info(orjson.dumps({"ts": round(time.time(), 3), **fields}).decode())
