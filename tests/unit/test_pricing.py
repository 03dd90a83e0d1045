"""A cascade plan's price from its stages' (``service.pricing.Pricer.price_plan``), on real tables."""

from __future__ import annotations

import pytest

from model_store.cascades import Plan
from model_store.imaging import ImageHeader
from model_store.manifest import Preprocessing
from service.core import schedule
from service.core.calibration import Calibration
from service.core.latency import DecodeModel, LatencyModel, Profile
from service.pricing import Place, Pricer
from tests.unit.test_manifest import PRE, variant

SMALL, BIG = "lite0-160-fp32", "lite0-224-fp32"


def cascade(**overrides: float) -> Plan:
    """``SMALL`` > ``BIG`` with figures a store might give it."""
    figures = {"threshold": 0.5, "search_gain": 0.01, "cost_seconds": 0.006, "held_out_accuracy": 0.86}
    return Plan(SMALL, BIG, **{**figures, "escalation_rate": 0.3, "top1": 0.74, **overrides})


def pricer() -> Pricer:
    small = variant(
        name=SMALL, resolution=160, preprocessing=Preprocessing(**{**PRE.model_dump(), "crop": 160})
    )
    big = variant(name=BIG, top1=0.742, top1_source="published")
    profiles = {SMALL: Profile(0.004, 0.005), BIG: Profile(0.010, 0.012)}
    # Decoding costs 1 ms plus 10 ns per input pixel: the big stage's decode is dearer.
    decode = DecodeModel({"JPEG": (0.001, 0.0, 0.0, 1e-8)}, window=64, fresh_seconds=5)
    return Pricer(
        {SMALL: small, BIG: big},
        LatencyModel(profiles, window=64, fresh_seconds=5),
        decode,
        Calibration(window=256, fresh_seconds=60),
    )


def test_a_plan_fits_at_both_stages_and_is_weighed_at_its_escalation_rate() -> None:
    p = pricer()
    header = ImageHeader("JPEG", 500, 375, 100_000)
    place = Place(schedule.dispatch_key(0.0, 0.05), (), [], [0.0, 0.0], 2, True, True)
    prices = p.price([SMALL, BIG], header, 0.05, place, 0.0)
    plan = p.price_plan(cascade(escalation_rate=0.25), prices, 0.05, place, 0.0)
    small, big = prices[SMALL], prices[BIG]
    # Decoded once, for the big stage's input; the first stage is the small inference within its bound.
    assert plan.decode_seconds == big.decode_seconds > small.decode_seconds
    assert plan.service_seconds == pytest.approx(
        big.decode_seconds + small.service_seconds - small.decode_seconds
    )
    # Worst case: both stages' points, plus the plan's margin (before any answer: the point again).
    both = big.decode_seconds + 0.004 + 0.010
    assert plan.candidate.predicted_seconds == pytest.approx(2 * both)
    assert plan.candidate.mean_seconds == pytest.approx(
        plan.service_seconds + 0.25 * (2 * both - plan.service_seconds)
    )
    assert plan.service_seconds < plan.candidate.mean_seconds < plan.candidate.predicted_seconds
    assert plan.candidate.top1 == 0.74 and plan.candidate.size_bytes == big.candidate.size_bytes


@pytest.mark.parametrize(
    ("plan_top1", "ranked"),
    [(0.74, 0.742), (0.737, 0.742), (0.736, None), (0.742, None), (0.75, None)],
)
def test_a_plan_within_the_tolerance_below_its_big_stage_ranks_as_it(plan_top1, ranked) -> None:
    """Its own figure stays its top1 (``min_accuracy`` goes by it); only the ranking is the big one's."""
    p = pricer()
    header = ImageHeader("JPEG", 500, 375, 100_000)
    place = Place(schedule.dispatch_key(0.0, 0.05), (), [], [0.0, 0.0], 2, True, True)
    prices = p.price([SMALL, BIG], header, 0.05, place, 0.0)
    assert prices[BIG].candidate.top1 == 0.742
    plan = p.price_plan(cascade(top1=plan_top1), prices, 0.05, place, 0.0)
    assert plan.candidate.top1 == plan_top1
    assert plan.candidate.ranked_top1 == ranked


def test_a_wait_is_played_only_for_the_candidates_that_could_fit() -> None:
    p = pricer()
    header = ImageHeader("JPEG", 500, 375, 100_000)
    busy = [0.0, 0.005]  # one worker free, the other for 5 ms more

    def priced(budget: float) -> tuple[dict[str, float], dict[str, float]]:
        place = Place(schedule.dispatch_key(0.0, budget), (), [], busy, 2, True, False)
        prices = p.price([SMALL, BIG], header, budget, place, 0.0)
        played = {
            n: schedule.wait_at_place(place.job(pr.service_seconds), [], busy, 0.0)
            for n, pr in prices.items()
        }
        return {n: pr.candidate.wait_seconds for n, pr in prices.items()}, played

    # 15 ms: the small variant's bound fits with no wait, the big one's (twice its point before
    # any answer: ~23 ms) cannot: it is past hope at once, and its own wait would be its share
    # of the busy worker's time. It is given the fastest's instead, which it could not use anyway.
    waits, played = priced(0.015)
    assert waits[SMALL] == played[SMALL] == 0.0
    assert played[BIG] == pytest.approx(0.0025)
    assert waits[BIG] == waits[SMALL]
    # 50 ms: both could fit, and each has its own wait.
    waits, played = priced(0.05)
    assert waits == played
