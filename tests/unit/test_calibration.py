"""The calibrated margin (service/core/calibration.py) on streams of made-up answers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.calibration import (
    FIRST_MARGIN_FRACTION,
    LEVEL_STEP,
    LEVELS,
    MIN_OWN,
    MIN_SPREAD,
    MIN_TIER_SCORES,
    PROMISE_QUANTILE,
    Calibration,
    conformal_quantile,
    lesson,
)

BUDGET = 0.010


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    residuals = [float(i) for i in range(1, 200)]  # 199 values: ceil(200 x 0.99) = 198th
    assert conformal_quantile(residuals, 0.99) == 198.0
    assert conformal_quantile(residuals[:50], 0.99) == 50.0  # too few for the rank: the largest
    assert conformal_quantile([3.0], 0.5) == 3.0


@settings(max_examples=25, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    point=st.floats(0.002, 0.030),
    bias=st.floats(-0.3, 0.3),  # the point prediction is this much off, relative
    spread=st.floats(0.01, 0.5),  # jitter, relative to the point
    spike_rate=st.floats(0.0, 0.05),
    spike=st.floats(0.001, 0.010),  # a pre-empted core: seconds added, whatever the variant
)
def test_the_bound_is_exceeded_at_no_more_than_the_promised_rate(
    seed: int, point: float, bias: float, spread: float, spike_rate: float, spike: float
) -> None:
    # Each answer is priced before it is seen, with the margin the answers before it give.
    rng = random.Random(seed)  # noqa: S311 (noise, not secrets)
    calibration = Calibration(window=256, fresh_seconds=60.0)
    exceeded = judged = 0
    for i in range(2500):
        now = 0.01 * i
        bound = point + calibration.service_margin("v", point, None, now)
        total = point * (1 + bias) * rng.lognormvariate(0.0, spread)
        if rng.random() < spike_rate:
            total += spike
        if i >= 300:  # once the window is full
            judged += 1
            exceeded += total > bound
        calibration.observe("v", total - point, BUDGET, 0.0, None, now)
    # Conformal: at most 1 - q in expectation; 3.5 standard deviations of 2200 draws above it.
    allowed = (1 - PROMISE_QUANTILE) + 3.5 * ((1 - PROMISE_QUANTILE) * PROMISE_QUANTILE / judged) ** 0.5
    assert exceeded / judged <= allowed


def test_a_variant_without_answers_of_its_own_takes_everyones_location() -> None:
    calibration = Calibration(window=256, fresh_seconds=5.0)
    first = MIN_OWN + MIN_SPREAD  # a location, then enough spread around it
    for i in range(first):  # "small" answers 0.4 ms over its point, give or take 0.1
        margin = calibration.service_margin("small", 0.004, None, 0.001 * i)
        assert margin == pytest.approx(FIRST_MARGIN_FRACTION * 0.004)
        calibration.observe("small", 0.0004 + 0.0001 * (i % 3 - 1), None, 0.0, None, 0.001 * i)
    # Location 0.4 ms, the spread's top 0.1 ms: 0.5 ms; answers without a
    # budget teach the service part too.
    assert calibration.service_margin("small", 0.004, None, 0.1) == pytest.approx(0.0005)
    assert calibration.service_margin("big", 0.020, None, 0.1) == pytest.approx(0.0005)


def test_each_variant_has_its_own_location_and_all_share_the_spread() -> None:
    calibration = Calibration(window=256, fresh_seconds=5.0)
    for i in range(MIN_OWN + MIN_SPREAD // 2):
        calibration.observe(
            "v", -0.001 + 0.0002 * (i % 2), BUDGET, 0.0, None, 0.0
        )  # its point is pessimistic
        calibration.observe("w", 0.005 + 0.0006 * (i % 2), BUDGET, 0.0, None, 0.0)  # optimistic, spread wider
    # Each one's median (the lower of its two values) + the shared spread's top (0.6 ms).
    assert calibration.service_margin("v", 0.010, None, 0.0) == pytest.approx(-0.001 + 0.0006, abs=1e-9)
    assert calibration.service_margin("w", 0.010, None, 0.0) == pytest.approx(0.005 + 0.0006, abs=1e-9)
    # Aged out: the first margin again.
    assert calibration.service_margin("v", 0.010, None, 6.0) == pytest.approx(FIRST_MARGIN_FRACTION * 0.010)


def test_the_wait_margin_is_per_tier_never_negative_and_only_for_budgets() -> None:
    calibration = Calibration(window=256, fresh_seconds=5.0)
    assert calibration.wait_margin(BUDGET, 0.0) == 0.0
    for i in range(100):
        calibration.observe(
            "v", 0.0, BUDGET, 0.002 if i % 50 == 0 else 0.0, None, 0.0
        )  # queued 2 ms over, twice
        calibration.observe("v", 0.0, 0.050, -0.003, None, 0.0)  # queued less than predicted
        calibration.observe("v", 0.0, None, 0.5, None, 0.0)  # overtaken by design: teaches no wait
        calibration.observe("v", 0.0, BUDGET, None, None, 0.0)  # queued past hope: no wait predicted
    assert calibration.wait_margin(BUDGET, 0.0) == pytest.approx(0.002)
    assert calibration.wait_margin(0.008, 0.0) == pytest.approx(0.002)  # the same tier
    assert calibration.wait_margin(0.050, 0.0) == 0.0
    assert calibration.wait_margin(None, 0.0) == 0.0
    assert calibration.wait_margin(BUDGET, 6.0) == 0.0  # aged out


def test_a_tiers_level_rises_with_its_misses_and_falls_with_answers_on_time() -> None:
    calibration = Calibration(window=256, fresh_seconds=5.0)
    assert calibration.level(BUDGET) == PROMISE_QUANTILE
    calibration.observe("v", 0.0, BUDGET, 0.0, True, 0.0)
    assert calibration.level(BUDGET) > PROMISE_QUANTILE
    assert calibration.level(0.050) == PROMISE_QUANTILE  # another tier: untouched
    for _ in range(2000):  # on time, again and again: down to the loosest level, no further
        calibration.observe("v", 0.0, 0.050, 0.0, False, 0.0)
    assert calibration.level(0.050) == LEVELS[0]
    for _ in range(50):  # late, again and again: up to the largest residual, no further
        calibration.observe("v", 0.0, 0.050, 0.0, True, 0.0)
    assert calibration.level(0.050) == LEVELS[1]
    before = calibration.level(BUDGET)
    calibration.observe("v", 0.0, BUDGET, 0.0, None, 0.0)  # pinned or a fallback: no lesson
    calibration.observe("v", 0.0, None, 0.0, None, 0.0)
    assert calibration.level(BUDGET) == before
    assert calibration.level(None) == PROMISE_QUANTILE


def _edge_of_budget(level_step: float) -> tuple[float, float]:
    """A slow, accurate variant whose service wanders, a fast one always on time, one budget: the
    slow one answers when its bound fits. Returns its share of the answers and the tier's miss
    rate."""
    rng = random.Random(7)  # noqa: S311 (noise, not secrets)
    calibration = Calibration(window=1024, fresh_seconds=600.0, level_step=level_step)
    budget, slow = 0.013, 0
    missed = judged = 0
    for i in range(6000):
        now = 0.01 * i
        point = rng.uniform(0.008, 0.011)  # this image's decode and the slow variant's inference
        fits = point + calibration.service_margin("slow", point, budget, now) <= budget
        if not fits:  # the fast one answers, on time, and teaches the shared spread
            point = 0.004
        service = point * rng.lognormvariate(0.0, 0.08) + (0.004 if rng.random() < 0.02 else 0.0)
        late = service > budget
        calibration.observe("slow" if fits else "fast", service - point, budget, 0.0, late, now)
        if i >= 1000:
            judged += 1
            slow += fits
            missed += late
    return slow / judged, missed / judged


def test_steering_the_level_chooses_the_accurate_variant_more_and_keeps_the_promise() -> None:
    fixed_share, fixed_missed = _edge_of_budget(0.0)
    steered_share, steered_missed = _edge_of_budget(LEVEL_STEP)
    assert fixed_missed < 1 - PROMISE_QUANTILE  # a 0.99 bound per request: unspent misses
    assert steered_share > fixed_share + 0.05
    assert steered_missed <= (1 - PROMISE_QUANTILE) * 1.2


def test_a_miss_no_choice_would_have_avoided_teaches_nothing() -> None:
    budget = 0.010
    assert lesson(0.009, budget, bound=0.0095, saved=0.002) is False
    assert lesson(0.011, budget, bound=0.0095, saved=0.002) is True  # the fastest would have made it
    assert lesson(0.013, budget, bound=0.0095, saved=0.002) is None  # late whatever ran
    assert lesson(0.011, budget, bound=0.0095, saved=0.0) is None  # it was the fastest
    # A fallback, priced past its budget: late, but not beyond its price.
    assert lesson(0.011, budget, bound=0.012, saved=0.0) is False


def test_the_promise_is_one_quantile_of_the_totals_not_two_stacked() -> None:
    # Service and wait each stall now and then, rarely in the same answer: the bound on their sum
    # keeps the promise and is well below the two bounds stacked.
    rng = random.Random(3)  # noqa: S311 (noise, not secrets)
    calibration = Calibration(window=1024, fresh_seconds=600.0)
    point = 0.005
    exceeded = judged = 0
    for i in range(4000):
        now = 0.01 * i
        bound = point + calibration.promise_margin("v", point, BUDGET, now)
        service = point * rng.lognormvariate(0.0, 0.05) + (0.006 if rng.random() < 0.03 else 0.0)
        wait_error = 0.006 if rng.random() < 0.03 else 0.0
        if i >= 1100:
            judged += 1
            exceeded += service + wait_error > bound
        calibration.observe("v", service - point, BUDGET, wait_error, None, now)
    stacked = calibration.service_margin("v", point, BUDGET, 40.0) + calibration.wait_margin(BUDGET, 40.0)
    assert calibration.promise_margin("v", point, BUDGET, 40.0) < stacked - 0.004
    allowed = (1 - PROMISE_QUANTILE) + 3.5 * ((1 - PROMISE_QUANTILE) * PROMISE_QUANTILE / judged) ** 0.5
    assert exceeded / judged <= allowed


def test_a_tier_with_few_scores_of_its_own_takes_every_tiers() -> None:
    # One tier's answers run 1 ms over their point now and then; a tier with no answers yet is
    # priced from them, not from its own first stall, and from its own scores once it has enough.
    calibration = Calibration(window=1024, fresh_seconds=600.0)
    point, now = 0.005, 0.0
    for i in range(400):
        calibration.observe("v", 0.001 if i % 20 == 0 else 0.0, 0.050, 0.0, None, now)
    settled = calibration.promise_margin("v", point, 0.050, now)
    assert settled == pytest.approx(0.001)
    assert calibration.promise_margin("v", point, BUDGET, now) == settled  # a new tier
    calibration.observe("v", 0.0, BUDGET, 0.008, None, now)  # its first answer: one long wait
    assert calibration.promise_margin("v", point, BUDGET, now) == settled
    for _ in range(MIN_TIER_SCORES):  # the tier's own, all on time to the dot
        calibration.observe("v", 0.0, BUDGET, 0.0, None, now)
    assert calibration.promise_margin("v", point, BUDGET, now) == pytest.approx(0.0)


def test_an_overloads_waits_age_out_sooner_than_the_services() -> None:
    calibration = Calibration(window=1024, fresh_seconds=60.0, load_fresh_seconds=10.0)
    point = 0.005
    for i in range(400):  # an overload: every answer waited 30 ms longer than predicted
        calibration.observe("v", 0.0, BUDGET, 0.030, None, 0.01 * i)
    assert calibration.promise_margin("v", point, BUDGET, 5.0) == pytest.approx(0.030)
    for i in range(300):  # it is over: answers wait as predicted
        calibration.observe("v", 0.0, BUDGET, 0.0, None, 20.0 + 0.01 * i)
    assert calibration.promise_margin("v", point, BUDGET, 23.0) == pytest.approx(0.0)
    assert calibration.service_margin("v", point, BUDGET, 23.0) == pytest.approx(0.0)


def test_a_request_priced_idle_is_priced_from_the_answers_priced_idle() -> None:
    # A burst of load: one answer in ten ran 8 ms over its point and waited 20 ms longer than
    # predicted. Then the server is idle, and its answers run to within 0.1 ms.
    calibration = Calibration(window=1024, fresh_seconds=60.0, load_fresh_seconds=10.0)
    point, now = 0.005, 1.0
    for i in range(1000):
        stalled = i % 10 == 0
        calibration.observe("v", 0.008 * stalled, BUDGET, 0.020 * stalled, None, 0.001 * i)
    for i in range(MIN_SPREAD):
        # Too few idle answers yet: everyone's, the burst's, price it.
        assert calibration.service_margin("v", point, BUDGET, now, idle=True) >= 0.008
        assert calibration.promise_margin("v", point, BUDGET, now, idle=True) >= 0.028
        calibration.observe("v", 0.0001 * (i % 2), BUDGET, 0.0, None, now, idle=True)
    assert calibration.service_margin("v", point, BUDGET, now, idle=True) <= 0.0001
    assert calibration.promise_margin("v", point, BUDGET, now, idle=True) <= 0.0001
    # A request priced under load is priced from every answer, the burst's included.
    assert calibration.service_margin("v", point, BUDGET, now) >= 0.008
    assert calibration.promise_margin("v", point, BUDGET, now) >= 0.028


def test_a_request_priced_idle_is_priced_from_the_whole_idle_window() -> None:
    # Idle answers, one in fifty a 4 ms stall, the last few hundred without one: the bound at
    # the promise's quantile still holds the stalls (all of the idle window counts), while
    # requests priced under load go by the last ``window`` answers, which hold none.
    calibration = Calibration(window=64, idle_window=1024, fresh_seconds=600.0)
    point = 0.005
    for i in range(1000):
        stalled = i < 700 and i % 50 == 25
        calibration.observe("v", 0.004 * stalled, BUDGET, 0.0, None, 0.01 * i, idle=True)
    now = 10.0
    assert calibration.promise_margin("v", point, BUDGET, now, idle=True) == pytest.approx(0.004)
    assert calibration.promise_margin("v", point, BUDGET, now) == pytest.approx(0.0)


def test_the_on_time_share_is_how_often_answers_meet_that_slack() -> None:
    # Answers of "v" run over their point by a lognormal amount, a stall now and then. The share
    # predicted for a slack is how often new answers meet it where fallbacks look (the upper
    # part: in the body, the location's own noise, a median of its recent answers, moves it by
    # more), and the bound at a level is where the share reaches that level (the conformal
    # quantile's other face).
    rng = random.Random(5)  # noqa: S311 (noise, not secrets)
    calibration = Calibration(window=1024, fresh_seconds=600.0)
    point, now = 0.005, 0.0

    def total() -> float:
        return point * rng.lognormvariate(0.0, 0.2) + (0.004 if rng.random() < 0.05 else 0.0)

    assert calibration.on_time_share("v", point, 0.020, BUDGET, now) is None  # nothing to say yet
    for _ in range(1024):
        calibration.observe("v", total() - point, BUDGET, 0.0, None, now)
    new = [total() for _ in range(4000)]
    for slack in (0.008, 0.010):
        share = calibration.on_time_share("v", point, slack, BUDGET, now)
        assert share == pytest.approx(sum(t <= slack for t in new) / len(new), abs=0.04)
    assert calibration.on_time_share("v", point, point - 0.004, BUDGET, now) == 0.0
    for level in (0.5, 0.9, PROMISE_QUANTILE):
        bound = point + calibration.promise_margin("v", point, BUDGET, now, level)
        # (1e-12: the bound's sum and the share's differences round apart.)
        assert calibration.on_time_share("v", point, bound + 1e-12, BUDGET, now) >= level
        assert calibration.on_time_share("v", point, bound - 1e-9, BUDGET, now) < level
