"""``GET /``: the operator's status page.

Server-rendered HTML that refreshes itself (``<meta http-equiv="refresh">``): no JavaScript, no
external asset, no build step, so it works on an offline gateway in any browser. It reads only
what the data plane already publishes: its readiness, the live latency table (``GET /models``),
the executor's queue and the Prometheus counters, which :class:`History` samples every few
seconds to tell what happened in the last minutes. A request to the data plane costs nothing
more for it.
"""

from __future__ import annotations

import asyncio
import html
import math
import platform
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from prometheus_client import Counter

from service.api.deps import MetricsDep, PlaneDep
from service.dataplane import DataPlane
from service.observability import Metrics

router = APIRouter()

REFRESH_SECONDS = 5
HISTORY_SECONDS = 300.0
SAMPLE_PERIOD_SECONDS = 5.0
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

# -- what happened lately -------------------------------------------------------------------------


def _totals(counter: Counter, labels: tuple[str, str]) -> dict[tuple[str, str], float]:
    return {
        (s.labels[labels[0]], s.labels[labels[1]]): s.value
        for family in counter.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


@dataclass(frozen=True)
class Counts:
    """The counters the page reads, at one instant (``time.monotonic()``)."""

    at: float
    selected: dict[tuple[str, str], float]  # (variant, reason)
    budget: dict[tuple[str, str], float]  # (variant, result)

    @classmethod
    def read(cls, metrics: Metrics) -> Counts:
        return cls(
            time.monotonic(),
            _totals(metrics.selected, ("variant", "reason")),
            _totals(metrics.budget, ("variant", "result")),
        )


@dataclass(frozen=True)
class Recent:
    """Counter increases over the last ``seconds``."""

    seconds: float
    by_variant: dict[str, float]
    by_reason: dict[str, float]
    met: float
    missed: float

    @property
    def requests(self) -> float:
        return sum(self.by_variant.values())


def _increase(
    now: dict[tuple[str, str], float], then: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {key: value - then.get(key, 0.0) for key, value in now.items() if value > then.get(key, 0.0)}


def _sum_by(values: dict[tuple[str, str], float], position: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    for key, value in values.items():
        sums[key[position]] = sums.get(key[position], 0.0) + value
    return sums


def recent(now: Counts, then: Counts) -> Recent:
    selected = _increase(now.selected, then.selected)
    budget = _sum_by(_increase(now.budget, then.budget), 1)
    return Recent(
        seconds=now.at - then.at,
        by_variant=_sum_by(selected, 0),
        by_reason=_sum_by(selected, 1),
        met=budget.get("met", 0.0),
        missed=budget.get("missed", 0.0),
    )


class History:
    """Counter samples of the last :data:`HISTORY_SECONDS`, taken beside the data plane."""

    def __init__(self) -> None:
        self._samples: deque[Counts] = deque()

    def add(self, counts: Counts) -> None:
        self._samples.append(counts)
        # Keep one sample at or before the window's start, so the window is always covered.
        while len(self._samples) > 1 and self._samples[1].at <= counts.at - HISTORY_SECONDS:
            self._samples.popleft()

    def baseline(self, now: Counts) -> Counts:
        """The oldest sample within the window; ``now`` itself before the first sample."""
        return self._samples[0] if self._samples else now

    async def keep(self, metrics: Metrics) -> None:
        """Forever: sample the counters every :data:`SAMPLE_PERIOD_SECONDS`."""
        while True:
            self.add(Counts.read(metrics))
            await asyncio.sleep(SAMPLE_PERIOD_SECONDS)


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


# -- rendering ------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


def _table(header: Iterable[str], rows: Iterable[str], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _frontier_svg(variants: list[dict[str, Any]], recently_served: set[str]) -> str:
    points: dict[str, tuple[float, float]] = {
        v["name"]: (float(v["latency_ms"]["p95"]), float(v["top1"]))
        for v in variants
        if v["top1"] is not None and v["latency_ms"]["p95"] > 0
    }
    if not points:
        return "<p>No variant has a known accuracy: nothing to draw.</p>"
    best = frontier(points)
    width, height, left, right, top, bottom = 640, 320, 56, 150, 16, 40
    latencies = [p[0] for p in points.values()]
    accuracies = [p[1] for p in points.values()]
    low_x, high_x = math.log(min(latencies) / 1.15), math.log(max(latencies) * 1.15)
    low_y, high_y = min(accuracies) - 0.01, max(accuracies) + 0.01

    def x(ms: float) -> float:
        return left + (math.log(ms) - low_x) / (high_x - low_x) * (width - left - right)

    def y(top1: float) -> float:
        return top + (high_y - top1) / (high_y - low_y) * (height - top - bottom)

    parts = [
        f'<svg id="frontier" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="accuracy against live p95 latency">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">'
        "live inference p95 (ms, log scale)</text>",
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">top-1</text>',
    ]
    for ms in sorted({min(latencies), max(latencies)}):
        parts.append(f'<text x="{x(ms):.1f}" y="{height - bottom + 14}" text-anchor="middle">{ms:.1f}</text>')
    for top1 in sorted({min(accuracies), max(accuracies)}):
        parts.append(f'<text x="{left - 4}" y="{y(top1) + 4:.1f}" text-anchor="end">{top1:.3f}</text>')
    line = sorted(points[n] for n in best)
    parts.append(
        '<polyline class="frontier-line" points="'
        + " ".join(f"{x(ms):.1f},{y(top1):.1f}" for ms, top1 in line)
        + '"/>'
    )
    for name, (ms, top1) in sorted(points.items(), key=lambda item: item[0] in best):
        kind = "served" if name in best else "dominated"
        ring = " recent" if name in recently_served else ""
        parts.append(
            f'<circle class="{kind}{ring}" data-variant="{_e(name)}" cx="{x(ms):.1f}" cy="{y(top1):.1f}" '
            f'r="{5 if name in best else 4}"><title>{_e(name)}: {ms:.2f} ms, top-1 {top1:.3f}</title>'
            "</circle>"
        )
    # Frontier labels right of their points, each pushed down clear of the one before it.
    previous: tuple[float, float] | None = None
    for ms, top1, name in sorted((points[n][0], points[n][1], n) for n in best):
        label_x, label_y = x(ms) + 8, y(top1) + 4
        if previous is not None and label_x - previous[0] < 110 and abs(label_y - previous[1]) < 12:
            label_y = previous[1] + 12
        parts.append(f'<text class="label" x="{label_x:.1f}" y="{label_y:.1f}">{_e(name)}</text>')
        previous = (label_x, label_y)
    parts.append("</svg>")
    return "".join(parts)


def _store_row(v: dict[str, Any], with_depth: bool) -> str:
    top1 = "unknown" if v["top1"] is None else f"{v['top1']:.4f}"
    depth = f'<td class="depth">{_e(v["depth"])}</td>' if with_depth else ""
    return (
        f'<tr data-variant="{_e(v["name"])}"><td class="name">{_e(v["name"])}</td><td>{_e(v["family"])}</td>'
        f"<td>{v['resolution']}</td><td>{_e(v['precision'])}</td>{depth}"
        f'<td class="size">{_size(v["size_bytes"])}</td><td class="top1">{top1}</td>'
        f"<td>{_e(v['top1_source'] or '–')}</td></tr>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-weight:600}
.ready{background:#15803d}.unready{background:#b91c1c}.degraded{background:#b45309}
#summary{font-size:1.1em;background:#f1f5f9;padding:.6em .8em;border-left:4px solid #2563eb}
table{border-collapse:collapse;margin:.3em 0}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f8fafc}
.muted{color:#666}.axis{stroke:#444}svg text{font-size:11px;fill:#333}
.frontier-line{fill:none;stroke:#2563eb;stroke-width:1.5}
circle.served{fill:#2563eb}circle.dominated{fill:#bbb}circle.recent{stroke:#f59e0b;stroke-width:3}
.label{fill:#1e3a8a}.cols{display:flex;gap:2em;flex-wrap:wrap}td.why{text-align:left}
"""


def render(plane: DataPlane, metrics: Metrics, history: History) -> str:
    variants = plane.describe()
    now = Counts.read(metrics)
    lately = recent(now, history.baseline(now))
    queued, running, workers = plane.executor.queued, plane.executor.running, plane.executor.workers
    inflight = metrics.registry.get_sample_value("edgefit_inflight_requests") or 0.0
    minutes = max(1, round(lately.seconds / 60))
    badge = (
        '<span class="badge ready">ready</span>'
        if plane.ready
        else f'<span class="badge unready">not ready</span> <span id="why">{_e(plane.readiness)}</span>'
    )
    served = plane.served_models()
    unavailable = {} if served is None else served.unavailable
    if unavailable:
        badge += ' <span class="badge degraded">degraded</span>'
    unavailable_rows = [
        f'<tr data-variant="{_e(name)}"><td class="name">{_e(name)}</td><td class="why">{_e(why)}</td></tr>'
        for name, why in sorted(unavailable.items())
    ]
    # The depth column only when the store has subnets ("d17": 17 of the family's blocks kept).
    with_depth = any(v["depth"] != "full" for v in variants)
    store_rows = [_store_row(v, with_depth) for v in variants]
    latency_rows = []
    for v in sorted(variants, key=lambda v: v["latency_ms"]["profiled_p50"]):
        lat = v["latency_ms"]
        ratio = lat["p50"] / lat["profiled_p50"] if lat["profiled_p50"] > 0 else 1.0
        ago = lat["last_run_seconds_ago"]
        latency_rows.append(
            f'<tr data-variant="{_e(v["name"])}"><td class="name">{_e(v["name"])}</td>'
            f'<td class="profiled-p50">{_ms(lat["profiled_p50"])}</td>'
            f'<td class="profiled-p95">{_ms(lat["profiled_p95"])}</td>'
            f'<td class="live-p50">{_ms(lat["p50"])}</td><td class="live-p95">{_ms(lat["p95"])}</td>'
            f'<td class="slowdown">{ratio:.2f}×</td>'
            f"<td>{'never' if ago is None else str(round(ago)) + ' s ago'}</td>"
            f'<td class="selected">{v["selected"]}</td></tr>'
        )
    budget_rows = [
        f"<tr><td>{budget} ms</td><td>{_e(fitting(variants, budget) or 'none fits: the fastest')}</td></tr>"
        for budget in BUDGETS_MS
    ]
    mix_rows = [
        f'<tr data-variant="{_e(name)}"><td>{_e(name)}</td><td>{count:.0f}</td>'
        f"<td>{count / lately.requests:.0%}</td></tr>"
        for name, count in sorted(lately.by_variant.items(), key=lambda item: -item[1])
    ] or ['<tr><td colspan="3" class="muted">no requests</td></tr>']
    budgeted = lately.met + lately.missed
    met = f"{lately.met:.0f} of {budgeted:.0f} budgets met ({lately.met / budgeted:.1%})" if budgeted else ""
    unknown = [v["name"] for v in variants if v["top1"] is None]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>edgefit · {_e(platform.node())}</title><style>{STYLE}</style></head>
<body>
<h1>edgefit on {_e(platform.node())} <span class="muted">({_e(platform.machine())})</span> {badge}</h1>
<p class="muted">Generated <span id="generated">{time.strftime("%H:%M:%S")}</span>; this page
refreshes itself every {REFRESH_SECONDS} s. JSON: <a href="/models">/models</a>,
<a href="/metrics">/metrics</a>, <a href="/readyz">/readyz</a>.</p>
<p id="summary">{_e(summary(plane, lately, queued))}</p>
{
        '<h2>Unavailable variants</h2><p class="muted">Left out because a file of theirs failed '
        "verification or loading; the others are served. Repair the file and reload "
        "(POST /admin/reload) to serve them again.</p>"
        + _table(("variant", "why"), unavailable_rows, "unavailable")
        if unavailable_rows
        else ""
    }
<div class="cols"><div>
<h2>Now</h2>
{
        _table(
            ("", ""),
            [
                f'<tr><td>queued</td><td id="queued">{queued}</td></tr>',
                f'<tr><td>running</td><td id="running">{running} of {workers} workers</td></tr>',
                f'<tr><td>in flight</td><td id="inflight">{inflight:.0f}</td></tr>',
                f'<tr><td>slowdown</td><td id="slowdown">{plane.slowdown():.2f}×</td></tr>',
            ],
            "now",
        )
    }
</div><div>
<h2>Last {minutes} min</h2>
{_table(("variant", "requests", "share"), mix_rows, "mix")}
<p id="budget-met">{_e(met)}</p>
</div><div>
<h2>Budget → variant (live p95)</h2>
{_table(("budget", "fits now"), budget_rows, "fits")}
</div></div>
<h2>Live latency table (inference, ms)</h2>
{
        _table(
            (
                "variant",
                "profiled p50",
                "profiled p95",
                "live p50",
                "live p95",
                "slowdown",
                "last run",
                "chosen",
            ),
            latency_rows,
            "latency",
        )
    }
<h2>This device's frontier</h2>
<p class="muted">Blue: on the frontier (no variant is both faster and more accurate); grey:
dominated; orange ring: served in the last {minutes} min.{
        " Accuracy unknown, not drawn: " + _e(", ".join(unknown)) if unknown else ""
    }</p>
{_frontier_svg(variants, set(lately.by_variant))}
<h2>Store</h2>
{
        _table(
            (
                "variant",
                "family",
                "resolution",
                "precision",
                *(("depth",) if with_depth else ()),
                "size",
                "top-1",
                "source",
            ),
            store_rows,
            "store",
        )
    }
</body></html>
"""


@router.get("/", summary="The status page (HTML; refreshes itself)", response_class=HTMLResponse)
async def status_page(request: Request, plane: PlaneDep, metrics: MetricsDep) -> HTMLResponse:
    history: History = request.app.state.history
    return HTMLResponse(render(plane, metrics, history))
