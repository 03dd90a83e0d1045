"""``GET /``: the operator's status page.

Server-rendered HTML that refreshes itself (``<meta http-equiv="refresh">``): no JavaScript, no
external asset, no build step, so it works on an offline gateway in any browser. It reads only
what the data plane already publishes: its readiness, the live latency table (``GET /models``),
the executor's queue and the Prometheus counters, which ``service.history`` samples every few
seconds to tell what happened in the last minutes. A request to the data plane costs nothing
more for it.

This module turns those facts into the page's figures (the frontier, the budget hints, the
summary sentence, the plot's coordinates); ``templates/status.html`` lays them out.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from service.api.deps import MetricsDep, PlaneDep
from service.api.documents import models_document, plans_document
from service.dataplane import DataPlane
from service.history import History, Recent
from service.observability import Metrics

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))

REFRESH_SECONDS = 5
# Budgets the page shows the live table's choice for.
BUDGETS_MS = (10, 20, 50, 100)
# Live inference this much slower than profiled is called "under load".
LOADED_SLOWDOWN = 1.2
REASONS_IN_WORDS = {
    "best_fit": "the most accurate variant that fits their budget",
    "no_budget": "no budget given: the most accurate variant",
    "fallback": "no variant fit their budget: the fastest allowed",
    "pinned": "pinned by the client",
    "contention": "downgraded to keep room for tighter budgets",
}

# -- the live table, the frontier and what the selector does --------------------------------------


def frontier(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names of the points (latency, accuracy) that no other point beats on both."""
    return {
        name
        for name, (latency, accuracy) in points.items()
        if not any(
            other_latency <= latency
            and other_accuracy >= accuracy
            and (other_latency, other_accuracy) != (latency, accuracy)
            for other_latency, other_accuracy in points.values()
        )
    }


def fitting(variants: list[dict[str, Any]], budget_ms: float) -> str | None:
    """The most accurate variant whose live inference p95 fits ``budget_ms`` (decode and queue
    not counted: the page's hint, not the selector's decision)."""
    fits = [v for v in variants if v["latency_ms"]["p95"] <= budget_ms]
    if not fits:
        return None
    best: dict[str, Any] = max(fits, key=lambda v: (v["top1"] or 0.0, -v["latency_ms"]["p95"]))
    return str(best["name"])


def summary(plane: DataPlane, recent: Recent, queued: int) -> str:
    """One plain sentence: what the server and its selector are doing now."""
    if not plane.ready:
        return f"Not serving: {plane.readiness}."
    minutes = max(1, round(recent.seconds / 60))
    slowdown = plane.slowdown()
    if queued > 0 or slowdown >= LOADED_SLOWDOWN:
        state = f"Under load (inference {slowdown:.2f}× its profiled time, {queued} queued)"
    else:
        state = f"Normal load (inference {slowdown:.2f}× its profiled time, nothing queued)"
    if recent.requests == 0:
        return f"{state}: no classification in the last {minutes} min."
    variant, count = max(recent.by_variant.items(), key=lambda item: item[1])
    reason = max(recent.by_reason.items(), key=lambda item: item[1])[0]
    sentence = (
        f"{state}: in the last {minutes} min, {count / recent.requests:.0%} of "
        f"{recent.requests:.0f} requests were served by {variant}, mostly "
        f"{REASONS_IN_WORDS.get(reason, reason)}"
    )
    budgeted = recent.met + recent.missed
    if budgeted:
        sentence += f"; {recent.met / budgeted:.1%} of budgets met"
    return sentence + "."


# -- the frontier plot: coordinates for the template's SVG ----------------------------------------


@dataclass(frozen=True)
class Point:
    name: str
    ms: float
    top1: float
    x: float
    y: float
    on_frontier: bool
    recent: bool


@dataclass(frozen=True)
class Plot:
    """The plot's frame (pixels) and its marks; ``x``/``y`` ticks as (position, text)."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    line: str  # the frontier's polyline points
    points: list[Point]  # dominated first, so the frontier's are drawn over them
    labels: list[tuple[float, float, str]]  # the frontier's names: x, y, text


WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 640, 320, 56, 150, 16, 40


def _labels(points: list[Point]) -> list[tuple[float, float, str]]:
    """Frontier labels right of their points, each pushed down clear of the one before it."""
    labels: list[tuple[float, float, str]] = []
    for p in sorted((p for p in points if p.on_frontier), key=lambda p: (p.ms, p.top1, p.name)):
        label_x, label_y = p.x + 8, p.y + 4
        if labels and label_x - labels[-1][0] < 110 and abs(label_y - labels[-1][1]) < 12:
            label_y = labels[-1][1] + 12
        labels.append((label_x, label_y, p.name))
    return labels


def frontier_plot(variants: list[dict[str, Any]], recently_served: set[str]) -> Plot | None:
    """Accuracy against live p95 (log scale) of the variants with a known accuracy; None if none."""
    measured: dict[str, tuple[float, float]] = {
        v["name"]: (float(v["latency_ms"]["p95"]), float(v["top1"]))
        for v in variants
        if v["top1"] is not None and v["latency_ms"]["p95"] > 0
    }
    if not measured:
        return None
    best = frontier(measured)
    latencies = [ms for ms, _ in measured.values()]
    accuracies = [top1 for _, top1 in measured.values()]
    low_x, high_x = math.log(min(latencies) / 1.15), math.log(max(latencies) * 1.15)
    low_y, high_y = min(accuracies) - 0.01, max(accuracies) + 0.01

    def x(ms: float) -> float:
        return LEFT + (math.log(ms) - low_x) / (high_x - low_x) * (WIDTH - LEFT - RIGHT)

    def y(top1: float) -> float:
        return TOP + (high_y - top1) / (high_y - low_y) * (HEIGHT - TOP - BOTTOM)

    points = [
        Point(name, ms, top1, x(ms), y(top1), name in best, name in recently_served)
        for name, (ms, top1) in sorted(measured.items(), key=lambda item: item[0] in best)
    ]
    line = " ".join(f"{x(ms):.1f},{y(top1):.1f}" for ms, top1 in sorted(measured[n] for n in best))
    return Plot(
        WIDTH,
        HEIGHT,
        LEFT,
        RIGHT,
        TOP,
        BOTTOM,
        x_ticks=[(x(ms), f"{ms:.1f}") for ms in sorted({min(latencies), max(latencies)})],
        y_ticks=[(y(top1), f"{top1:.3f}") for top1 in sorted({min(accuracies), max(accuracies)})],
        line=line,
        points=points,
        labels=_labels(points),
    )


# -- the page -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _latency_row(v: dict[str, Any]) -> dict[str, Any]:
    lat = v["latency_ms"]
    ratio = lat["p50"] / lat["profiled_p50"] if lat["profiled_p50"] > 0 else 1.0
    ago = lat["last_run_seconds_ago"]
    return {
        "name": v["name"],
        "profiled_p50": _ms(lat["profiled_p50"]),
        "profiled_p95": _ms(lat["profiled_p95"]),
        "p50": _ms(lat["p50"]),
        "p95": _ms(lat["p95"]),
        "slowdown": f"{ratio:.2f}×",
        "last_run": "never" if ago is None else f"{round(ago)} s ago",
        "selected": v["selected"],
    }


def _store_row(v: dict[str, Any]) -> dict[str, Any]:
    return {
        **v,
        "size": f"{v['size_bytes'] / 1e6:.1f} MB",
        "top1_text": "unknown" if v["top1"] is None else f"{v['top1']:.4f}",
    }


def _plan_row(p: dict[str, Any]) -> dict[str, Any]:
    live = p["live"]["escalation_rate"]
    return {
        "name": p["name"],
        "threshold": f"{p['threshold']:.2f}",
        "top1": f"{p['top1']:.4f}",
        "recorded": f"{p['escalation_rate']:.0%}",
        "live": "–" if live is None else f"{live:.0%}",
        "runs": p["live"]["runs"],
        "escalated": p["live"]["escalated"],
    }


def page(plane: DataPlane, metrics: Metrics, history: History) -> dict[str, Any]:
    """The template's context: every figure on the page, formatted."""
    variants = models_document(plane.describe())
    lately = history.lately(metrics)
    queued = plane.executor.queued
    budgeted = lately.met + lately.missed
    return {
        "refresh_seconds": REFRESH_SECONDS,
        "node": platform.node(),
        "machine": platform.machine(),
        "generated": time.strftime("%H:%M:%S"),
        "ready": plane.ready,
        "readiness": plane.readiness,
        "summary": summary(plane, lately, queued),
        "queued": queued,
        "running": plane.executor.running,
        "workers": plane.executor.workers,
        "inflight": f"{metrics.registry.get_sample_value('edgefit_inflight_requests') or 0.0:.0f}",
        "slowdown": f"{plane.slowdown():.2f}×",
        "minutes": max(1, round(lately.seconds / 60)),
        "mix": [
            (name, f"{count:.0f}", f"{count / lately.requests:.0%}")
            for name, count in sorted(lately.by_variant.items(), key=lambda item: -item[1])
        ],
        "met": f"{lately.met:.0f} of {budgeted:.0f} budgets met ({lately.met / budgeted:.1%})"
        if budgeted
        else "",
        "fits": [(budget, fitting(variants, budget) or "none fits: the fastest") for budget in BUDGETS_MS],
        "latency": [_latency_row(v) for v in sorted(variants, key=lambda v: v["latency_ms"]["profiled_p50"])],
        "plot": frontier_plot(variants, set(lately.by_variant)),
        "unknown": ", ".join(v["name"] for v in variants if v["top1"] is None),
        # The depth column only when the store has subnets ("d17": 17 of the family's blocks kept).
        "with_depth": any(v["depth"] != "full" for v in variants),
        "store": [_store_row(v) for v in variants],
        "plans": [_plan_row(p) for p in plans_document(plane.describe_plans())],
        "unavailable": sorted(plane.unavailable().items()),
        # The pool's other candidates (a failed file has its own table, above).
        "left": [
            (c.variant.name, c.reason, c.detail or "")
            for c in plane.describe_unserved()
            if c.reason != "unavailable"
        ],
    }


@router.get("/", summary="The status page (HTML; refreshes itself)", response_class=HTMLResponse)
async def status_page(request: Request, plane: PlaneDep, metrics: MetricsDep) -> HTMLResponse:
    history: History = request.app.state.history
    return templates.TemplateResponse(request, "status.html", page(plane, metrics, history))
