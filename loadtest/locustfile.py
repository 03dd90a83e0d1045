"""Locust load test of edgefit: real JPEGs, a mix of budgets and constraints, three load shapes.

Run it through ``loadtest/run.sh`` (``make loadtest``). Besides the HTTP requests, every answer
is recorded as Locust statistics of its own, so the report shows what a latency budget service
is judged by, not only HTTP latency:

- type ``BUDGET``, one row per tier: a request whose answer missed its budget (by the server's
  clock, ``budget_met``) is a failure, so the row's failure rate is the tier's miss rate;
  response time = the server's ``timing.total_ms``.
- type ``VARIANT``, one row per variant that answered: the variant mix; response time = the
  server's ``inference_ms``.
- type ``SERVER``: the server's own ``queue_ms``, ``decode_ms``, ``inference_ms`` and
  ``overhead_ms`` (total − queue − decode − inference), as response times.
- type ``CASCADE``, one row per confidence cascade plan and how it ended (``answered``,
  ``escalated``, ``out_of_time``): its escalation rate under this load; response time = the
  server's ``inference_ms`` (both stages).
- type ``SHED``, one row per tier: 503 answers (load shedding). They are not HTTP failures: a
  server that sheds at once is doing its job; they are reported apart.

At the end the thresholds below decide the exit code (and ``summary.json`` beside the CSV).

Environment: EDGEFIT_SAMPLE_DIR (default ../shared/imagenet-sample), LOADTEST_SHAPE (steady,
ramp, spike), LOADTEST_USERS, LOADTEST_DURATION (seconds), LOADTEST_PACING (seconds between one
user's requests), LOADTEST_THRESHOLDS (JSON merged over the shape's thresholds),
LOADTEST_SUMMARY (where summary.json goes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant_pacing, events, task
from verdict import below

log = logging.getLogger("edgefit.loadtest")

SAMPLE_DIR = Path(os.environ.get("EDGEFIT_SAMPLE_DIR", "../shared/imagenet-sample"))
# A fixed, named subset of the sample: every 10th file of the sorted list, 100 images.
IMAGE_STRIDE = 10
SHAPE = os.environ.get("LOADTEST_SHAPE", "steady")
PACING_S = float(os.environ.get("LOADTEST_PACING", "0.1"))


@dataclass(frozen=True)
class Scenario:
    """One kind of request: its tier name (a stats row), query, and share of the traffic."""

    tier: str
    query: str
    weight: int
    budget_ms: float | None


SCENARIOS = (
    Scenario("10ms", "budget=10ms", 2, 10.0),
    Scenario("20ms", "budget=20ms", 3, 20.0),
    Scenario("50ms", "budget=50ms", 2, 50.0),
    # strict=true: refuse (503 + Retry-After) rather than answer late.
    Scenario("20ms strict", "budget=20ms&strict=true", 2, 20.0),
    Scenario("none", "", 1, None),
    # Constraints narrow the choice; they are tiers of their own, since a constraint may
    # make a budget unmeetable by design, and that must not blur the plain tiers' rates.
    # Their values are set from GET /models at the start (see _constraints).
    Scenario("50ms+min_accuracy", "budget=50ms&min_accuracy={min_accuracy}", 1, 50.0),
    Scenario("20ms+max_size", "budget=20ms&max_size={max_size}", 1, 20.0),
)
# Defaults for a server whose /models cannot be read: the contract's own examples.
CONSTRAINTS = {"min_accuracy": "0.75", "max_size": "6MB"}

# Thresholds per shape: the largest failure ratio (HTTP errors other than 503, over all
# requests) and the least budget-met rate per tier (over answered requests; a tier misses it
# only when its count shows it, see ``verdict.below``). Steady load stays well below
# saturation, and the queue is served earliest deadline first with workers kept for tight
# budgets, so every plain tier of the mix (10, 20 and 50 ms, beside no budget) must hold its
# promise there: the mixed-budgets service level of issue 14. Ramp and spike go past saturation
# on purpose. There, by the contract, a request without strict=true whose budget nothing can
# meet is still answered (late) while the queue is within its bound, so the plain tiers are
# reported, not gated; the strict tier is the promise under overload: what is answered meets
# its budget, the rest is refused with 503 + Retry-After. The failure gate is the same
# everywhere: overload must be shed, not fail.
THRESHOLDS: dict[str, dict[str, Any]] = {
    "steady": {
        "max_failure_ratio": 0.01,
        "min_budget_met": {
            "10ms": 0.97,
            "20ms": 0.99,
            "50ms": 0.99,
            "50ms+min_accuracy": 0.9,
            "20ms+max_size": 0.8,
            "20ms strict": 0.95,
        },
    },
    "ramp": {"max_failure_ratio": 0.01, "min_budget_met": {"20ms strict": 0.95}},
    "spike": {"max_failure_ratio": 0.01, "min_budget_met": {"20ms strict": 0.95}},
}


def _images() -> list[bytes]:
    files = sorted(p for p in SAMPLE_DIR.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    if not files:
        raise SystemExit(f"loadtest: no JPEGs in {SAMPLE_DIR} (set EDGEFIT_SAMPLE_DIR)")
    return [p.read_bytes() for p in files[::IMAGE_STRIDE]]


IMAGES: list[bytes] = []


@events.init.add_listener
def _load_images(environment: Any, **_: Any) -> None:
    IMAGES.extend(_images())


@events.test_start.add_listener
def _constraints(environment: Any, **_: Any) -> None:
    """Constraints that half the served variants satisfy, whatever subset the server serves.

    Fixed values would make the constraint tiers meaningless (or all 422) on a server that
    serves only some variants; the medians keep both a real choice and a real restriction.
    """
    if not str(environment.host).startswith(("http://", "https://")):
        raise SystemExit(f"loadtest: the host must be an http(s) URL, not {environment.host!r}")
    try:
        # The scheme is checked above.
        with urllib.request.urlopen(f"{environment.host}/models", timeout=10) as r:  # noqa: S310
            doc = json.load(r)
    except (OSError, ValueError) as exc:
        log.warning("GET /models failed (%s); using the default constraints", exc)
        return
    models = doc if isinstance(doc, list) else doc.get("models", doc.get("variants", []))
    top1 = sorted(m["top1"] for m in models if m.get("top1") is not None)
    sizes = sorted(m["size_bytes"] for m in models if m.get("size_bytes"))
    if top1:
        CONSTRAINTS["min_accuracy"] = f"{top1[(len(top1) - 1) // 2]:.4f}"
    if sizes:
        CONSTRAINTS["max_size"] = str(sizes[len(sizes) // 2])
    log.info("constraints: min_accuracy=%s max_size=%s", *CONSTRAINTS.values())


@dataclass
class Tally:
    """Per-tier counts for the thresholds (Locust's own stats hold the same, less conveniently)."""

    requests: int = 0
    answered: int = 0
    met: int = 0
    shed: int = 0
    failures: int = 0
    variants: dict[str, int] = field(default_factory=dict)


TALLY: dict[str, Tally] = {s.tier: Tally() for s in SCENARIOS}


class ContractError(Exception):
    """The answer does not follow CONTRACT.md."""


class BudgetMissed(Exception):
    """The server answered after the request's budget (by its own clock)."""


class EdgefitUser(FastHttpUser):
    wait_time = constant_pacing(PACING_S)

    @task
    def classify(self) -> None:
        scenario = random.choices(SCENARIOS, weights=[s.weight for s in SCENARIOS])[0]
        tally = TALLY[scenario.tier]
        tally.requests += 1
        query = scenario.query.format(**CONSTRAINTS)
        path = f"/classify?{query}" if query else "/classify"
        with self.client.post(
            path,
            data=random.choice(IMAGES),
            headers={"Content-Type": "image/jpeg"},
            name=f"/classify [{scenario.tier}]",
            catch_response=True,
        ) as response:
            if response.status_code == 503:
                if "Retry-After" not in response.headers:
                    tally.failures += 1
                    response.failure(ContractError("503 without Retry-After"))
                    return
                tally.shed += 1
                response.success()
                self._fire("SHED", scenario.tier, response.request_meta["response_time"])
                return
            if response.status_code != 200:
                tally.failures += 1
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                doc = response.json()
                variant = doc["model"]["name"]
                timing = {
                    k: float(doc["timing"][k]) for k in ("total_ms", "queue_ms", "decode_ms", "inference_ms")
                }
                budget_met = doc["budget_met"]
                if (budget_met is None) != (scenario.budget_ms is None):
                    raise ContractError("budget_met must be null exactly when no budget is given")
            except (KeyError, TypeError, ValueError) as exc:
                tally.failures += 1
                response.failure(ContractError(f"malformed answer: {type(exc).__name__}"))
                return
            response.success()
        tally.answered += 1
        tally.variants[variant] = tally.variants.get(variant, 0) + 1
        if budget_met is not None:
            tally.met += bool(budget_met)
            self._fire(
                "BUDGET",
                scenario.tier,
                timing["total_ms"],
                None if budget_met else BudgetMissed("budget missed"),
            )
        self._fire("VARIANT", variant, timing["inference_ms"])
        cascade = doc.get("cascade")
        if cascade:
            self._fire("CASCADE", f"{cascade['plan']} {cascade['outcome']}", timing["inference_ms"])
        self._fire_server(timing)

    def _fire_server(self, timing: dict[str, float]) -> None:
        """The server's own timing of an answer, as ``SERVER`` rows."""
        overhead = timing["total_ms"] - timing["queue_ms"] - timing["decode_ms"] - timing["inference_ms"]
        for name, value in (
            ("queue_ms", timing["queue_ms"]),
            ("decode_ms", timing["decode_ms"]),
            ("inference_ms", timing["inference_ms"]),
            ("overhead_ms", overhead),
        ):
            self._fire("SERVER", name, max(0.0, value))

    def _fire(self, kind: str, name: str, ms: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=ms,
            response_length=0,
            exception=exception,
            context={},
        )


# Load shapes. Each reads LOADTEST_USERS / LOADTEST_DURATION; only the one LOADTEST_SHAPE names
# is left non-abstract, because Locust runs the first concrete shape class it finds.
USERS = int(os.environ.get("LOADTEST_USERS", "0"))  # 0: the shape's default
DURATION_S = float(os.environ.get("LOADTEST_DURATION", "0"))


class SteadyShape(LoadTestShape):
    """A constant number of users (default 2, about 20 requests/s), well below saturation."""

    users, duration_s = USERS or 2, DURATION_S or 60.0

    def tick(self) -> tuple[int, float] | None:
        return (self.users, self.users) if self.get_run_time() < self.duration_s else None


class StepRampShape(LoadTestShape):
    """Ten equal steps from a few users to ``users``, past saturation: where does it give?"""

    users, duration_s, steps = USERS or 32, DURATION_S or 120.0, 10

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.duration_s:
            return None
        step = math.floor(t / (self.duration_s / self.steps)) + 1
        return max(1, round(self.users * step / self.steps)), 50.0


class SpikeShape(LoadTestShape):
    """A low base, a sudden spike to ``users`` in the middle fifth, then the base again."""

    users, duration_s = USERS or 32, DURATION_S or 60.0

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.duration_s:
            return None
        in_spike = 0.4 * self.duration_s <= t < 0.6 * self.duration_s
        base = max(1, self.users // 12)
        return (self.users, 1000.0) if in_spike else (base, 1000.0)


SHAPES: dict[str, type[LoadTestShape]] = {
    "steady": SteadyShape,
    "ramp": StepRampShape,
    "spike": SpikeShape,
}
if SHAPE not in SHAPES:
    raise SystemExit(f"loadtest: LOADTEST_SHAPE must be one of {', '.join(SHAPES)}, not {SHAPE!r}")
for _shape in SHAPES.values():
    _shape.abstract = _shape is not SHAPES[SHAPE]


def thresholds() -> dict[str, Any]:
    chosen = json.loads(json.dumps(THRESHOLDS[SHAPE]))
    override = json.loads(os.environ.get("LOADTEST_THRESHOLDS", "{}"))
    chosen["min_budget_met"].update(override.pop("min_budget_met", {}))
    chosen.update(override)
    return chosen


def evaluate(tally: dict[str, Tally], limits: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The run's summary and the thresholds it missed (empty: passed)."""
    requests = sum(t.requests for t in tally.values())
    failures = sum(t.failures for t in tally.values())
    missed = []
    failure_ratio = failures / requests if requests else 1.0
    if not requests:
        missed.append("no requests were made")
    if failure_ratio > limits["max_failure_ratio"]:
        missed.append(f"failure ratio {failure_ratio:.2%} > {limits['max_failure_ratio']:.2%}")
    tiers = {}
    for name, t in tally.items():
        budgeted = any(s.tier == name and s.budget_ms is not None for s in SCENARIOS)
        rate = t.met / t.answered if t.answered and budgeted else None
        tiers[name] = {
            "requests": t.requests,
            "answered": t.answered,
            "budget_met": rate,
            "shed_503": t.shed,
            "failures": t.failures,
            "variants": t.variants,
        }
        floor = limits["min_budget_met"].get(name)
        if floor is not None and rate is not None and below(t.met, t.answered, floor):
            missed.append(f"tier {name}: budget met {rate:.1%} ({t.met} of {t.answered}) < {floor:.0%}")
    if requests and not any(t.answered for t in tally.values()):
        missed.append("no request was answered (all shed or failed)")
    summary = {
        "shape": SHAPE,
        "requests": requests,
        "failures": failures,
        "failure_ratio": failure_ratio,
        "shed_503": sum(t.shed for t in tally.values()),
        "tiers": tiers,
        "thresholds": limits,
        "missed": missed,
    }
    return summary, missed


@events.quitting.add_listener
def _gate(environment: Any, **_: Any) -> None:
    summary, missed = evaluate(TALLY, thresholds())
    path = os.environ.get("LOADTEST_SUMMARY")
    if path:
        Path(path).write_text(json.dumps(summary, indent=1))
    for name, tier in summary["tiers"].items():
        rate = "–" if tier["budget_met"] is None else f"{tier['budget_met']:.1%}"
        log.info(
            "tier %-18s requests %5d answered %5d met %6s shed %4d failed %3d",
            name,
            tier["requests"],
            tier["answered"],
            rate,
            tier["shed_503"],
            tier["failures"],
        )
    for line in missed:
        log.error("threshold missed: %s", line)
    # Locust would exit 1 on any failure entry, and a missed budget is one by design (see
    # the module docstring): the thresholds decide instead.
    environment.process_exit_code = 1 if missed else 0
