"""The status page's pure parts: the frontier, the counter window (``service.history``), the
budget hint."""

from __future__ import annotations

from service.api.status import fitting, frontier
from service.history import HISTORY_SECONDS, Counts, History, recent


def test_frontier_keeps_only_points_nothing_beats_on_both() -> None:
    points = {
        "fast": (2.0, 0.60),
        "slow-accurate": (10.0, 0.80),
        "middle": (5.0, 0.70),
        "dominated": (6.0, 0.65),  # middle is faster and more accurate
        "tie-slower": (5.0, 0.69),  # as fast as middle, less accurate
    }
    assert frontier(points) == {"fast", "middle", "slow-accurate"}
    # Two identical points beat neither: both stay.
    assert frontier({"a": (1.0, 0.5), "b": (1.0, 0.5)}) == {"a", "b"}


def counts(at: float, selected: dict[tuple[str, str], float], met: float, missed: float) -> Counts:
    return Counts(at, selected, {("v", "met"): met, ("v", "missed"): missed})


def test_recent_is_the_increase_since_the_baseline() -> None:
    then = counts(0.0, {("a", "best_fit"): 5}, met=4, missed=1)
    now = counts(60.0, {("a", "best_fit"): 8, ("b", "fallback"): 2, ("c", "pinned"): 0}, met=9, missed=2)
    lately = recent(now, then)
    assert lately.seconds == 60.0
    assert lately.by_variant == {"a": 3, "b": 2} and lately.requests == 5
    assert lately.by_reason == {"best_fit": 3, "fallback": 2}
    assert (lately.met, lately.missed) == (5, 1)


def test_history_keeps_one_sample_at_the_window_start() -> None:
    history = History()
    first = counts(0.0, {}, 0, 0)
    assert history.baseline(first) is first
    samples = [counts(t, {}, 0, 0) for t in (0.0, 100.0, 200.0, 310.0, 420.0)]
    for sample in samples:
        history.add(sample)
    # At 420 s the window starts at 120 s: the 100 s sample still covers its start.
    assert history.baseline(samples[-1]).at == 100.0
    assert samples[-1].at - history.baseline(samples[-1]).at >= HISTORY_SECONDS


def variant(name: str, p95: float, top1: float | None) -> dict:
    return {"name": name, "top1": top1, "latency_ms": {"p95": p95}}


def test_fitting_is_the_most_accurate_within_the_budget() -> None:
    variants = [variant("fast", 3.0, 0.6), variant("mid", 9.0, 0.7), variant("slow", 30.0, 0.8)]
    assert fitting(variants, 10) == "mid"
    assert fitting(variants, 50) == "slow"
    assert fitting(variants, 2) is None
