"""The JSON shapes of the data plane's facts: a variant as answers name it, and ``GET /models``.

Shared by the routes that show them (``/classify``, ``/models``, the status page); no route.
"""

from __future__ import annotations

from typing import Any

from model_store.manifest import Variant, depth_tag
from service.live_table import Candidate, PlanState, VariantState


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


def _optional_ms(seconds: float | None) -> float | None:
    return None if seconds is None else _ms(seconds)


def _model_object(v: Variant) -> dict[str, Any]:
    return {
        "name": v.name,
        "family": v.family,
        "resolution": v.resolution,
        "precision": v.precision,
        "top1": v.top1,
        "top1_source": v.top1_source,
        "size_bytes": v.size_bytes,
    }


class VariantEncodings:
    """Per variant, the answer's ``model`` object and the ``X-Model-Variant`` header value, made
    once: the hot path only looks them up. A reload's new ``Variant`` of the same name replaces
    its entry (the object is compared by identity, which costs nothing)."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Variant, dict[str, Any], bytes]] = {}

    def of(self, variant: Variant) -> tuple[dict[str, Any], bytes]:
        """The ``model`` object (shared: never modify it) and the header value."""
        known = self._by_name.get(variant.name)
        if known is None or known[0] is not variant:
            known = self._by_name[variant.name] = (variant, _model_object(variant), variant.name.encode())
        return known[1], known[2]


def _manifest_fields(v: Variant) -> dict[str, Any]:
    # Which files hold it is the store's business.
    return v.model_dump(mode="json", exclude={"file", "weights"})


def pool_document(states: list[VariantState], unserved: list[Candidate]) -> list[dict[str, Any]]:
    """``GET /models?pool=true``' variants: every variant of the store, ``served`` or not and
    why (``reason``, ``service.core.frontier.Reason``, with ``detail``), and ``frontier_ms``: what
    this device's frontier compared it by (a typical JPEG's decode and its median inference
    here), null where no frontier was chosen from it."""
    return [
        {**doc, "served": True, "frontier_ms": _optional_ms(s.frontier_seconds)}
        for s, doc in zip(states, models_document(states), strict=True)
    ] + [
        {
            **_manifest_fields(c.variant),
            "depth": depth_tag(c.variant.subnet),
            "served": False,
            "reason": c.reason,
            "detail": c.detail,
            "frontier_ms": _optional_ms(c.frontier_seconds),
        }
        for c in unserved
    ]


def models_document(states: list[VariantState]) -> list[dict[str, Any]]:
    """``GET /models``' variants: manifest fields plus the live table and selection counts."""
    return [
        {
            **_manifest_fields(s.variant),
            "classes": s.classes,
            # "full", or "d17" for a subnet keeping 17 of its family's blocks.
            "depth": depth_tag(s.variant.subnet),
            "kept_block_count": None if s.variant.subnet is None else len(s.variant.subnet.kept_blocks),
            "latency_ms": {
                "p50": _ms(s.p50_seconds),
                "p95": _ms(s.p95_seconds),
                "profiled_p50": _ms(s.profiled_p50_seconds),
                "profiled_p95": _ms(s.profiled_p95_seconds),
                "last_run_seconds_ago": None
                if s.last_run_seconds_ago is None
                else round(s.last_run_seconds_ago, 3),
            },
            "selected": s.selected,
        }
        for s in states
    ]


def plans_document(states: list[PlanState]) -> list[dict[str, Any]]:
    """``GET /models``' cascade plans: as planned at load (threshold, held-out accuracy and
    escalation rate, mean inference on this device) and what each did since."""
    return [
        {
            "name": s.plan.name,
            "small": s.plan.small,
            "big": s.plan.big,
            "threshold": s.plan.threshold,
            "top1": s.plan.top1,
            "held_out_accuracy": round(s.plan.held_out_accuracy, 4),
            "escalation_rate": round(s.plan.escalation_rate, 4),
            "planned_cost_ms": round(1000 * s.plan.cost_seconds, 3),
            "live": {
                "runs": s.runs,
                "escalation_rate": None if s.runs == 0 else round(s.unsure / s.runs, 4),
                "escalated": s.escalated,
            },
            "selected": s.selected,
        }
        for s in states
    ]
