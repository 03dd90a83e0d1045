"""Planning confidence cascades from answers (``model_store.cascades``): pure, synthetic answers."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.cascades import (
    MIN_SAVING,
    THRESHOLDS,
    Answers,
    Scored,
    calibrate,
    match,
    plan_cascades,
    simulate,
)


def answers(scores: list[float], correct: list[bool]) -> Answers:
    return Answers(tuple(float(s) for s in scores), tuple(bool(c) for c in correct))


def ladder(seed: int, held_out_seed: int) -> list[Scored]:
    """A small variant that is right when sure, a big one right more often, a middle one: the
    search half from ``seed``, the held-out half from ``held_out_seed``."""

    def half(rng: np.random.Generator) -> tuple[Answers, Answers, Answers]:
        small_scores = [rng.random() for _ in range(400)]
        # The small variant is right on every image it is sure of, and on a few others.
        small = [s > 0.4 or rng.random() < 0.2 for s in small_scores]
        big = [rng.random() < 0.9 for _ in small_scores]
        middle = [rng.random() < 0.7 for _ in small_scores]
        return (
            answers(small_scores, small),
            answers([rng.random() for _ in small_scores], big),
            answers([rng.random() for _ in small_scores], middle),
        )

    search, held_out = half(np.random.default_rng(seed)), half(np.random.default_rng(held_out_seed))
    return [
        Scored("small", "imagenet-1k", 0.002, 0.6, search[0], held_out[0]),
        Scored("big", "imagenet-1k", 0.010, 0.77, search[1], held_out[1]),
        Scored("middle", "imagenet-1k", 0.006, 0.7, search[2], held_out[2]),
    ]


def test_simulate_escalates_below_the_threshold() -> None:
    small = answers([0.9, 0.3, 0.6, 0.1], [True, False, False, False])
    big = answers([0.5, 0.5, 0.5, 0.5], [False, True, True, False])
    assert simulate(small, big, 0.5) == (0.5, 0.5)  # 0.3 and 0.1 escalate; big gets one right
    assert simulate(small, big, 0.7) == (0.75, 0.75)


def test_a_plan_beats_the_single_variants_where_the_small_one_is_right_when_sure() -> None:
    plans = plan_cascades(ladder(1, 2))
    assert plans and plans[0].small == "small" and plans[0].big == "big"
    plan = plans[0]
    assert 0 < plan.escalation_rate < 1 and plan.cost_seconds < 0.010
    # The held-out figure is on the variants' scale: big's top1 + (plan - big), held out.
    big = ladder(1, 2)[1]
    assert abs(plan.top1 - round(0.77 + plan.held_out_accuracy - big.held_out.accuracy, 4)) < 1e-9


def test_threshold_calibration_never_reads_the_held_out_half() -> None:
    """The same search half with any held-out half gives the same plans (pairs and thresholds);
    only the recorded figures differ."""
    chosen = {
        seed: [(p.small, p.big, p.threshold, p.search_gain) for p in plan_cascades(ladder(1, seed))]
        for seed in (2, 3, 4)
    }
    assert chosen[2] and chosen[2] == chosen[3] == chosen[4]
    recorded = {seed: [p.held_out_accuracy for p in plan_cascades(ladder(1, seed))] for seed in (2, 3, 4)}
    assert len({tuple(r) for r in recorded.values()}) > 1


def test_no_plan_where_confidence_says_nothing() -> None:
    """A small variant whose top score is unrelated to being right: a cascade is a random split
    of traffic, which no threshold lifts above the line between the two variants (enough images
    that chance does not either)."""
    rng = np.random.default_rng(5)

    def noise(p: float) -> Answers:
        return answers([rng.random() for _ in range(20_000)], [rng.random() < p for _ in range(20_000)])

    variants = [
        Scored("small", "imagenet-1k", 0.002, 0.6, noise(0.6), noise(0.6)),
        Scored("big", "imagenet-1k", 0.010, 0.77, noise(0.9), noise(0.9)),
    ]
    assert calibrate(variants[0], variants[1], variants) is None
    assert plan_cascades(variants) == []


def test_only_one_class_space_and_a_handful() -> None:
    variants = ladder(1, 2)
    other = [
        Scored(v.name + "-x", "labels-x.txt", v.cost_seconds, v.top1, v.search, v.held_out) for v in variants
    ]
    plans = plan_cascades(variants + other, max_plans=2)
    assert len(plans) == 2
    assert all((p.small.endswith("-x")) == (p.big.endswith("-x")) for p in plans)


def test_a_plan_matching_the_most_accurate_variant_for_less_is_offered() -> None:
    """Beside the plans that gain the most, one that is as accurate as its big stage alone (search
    half) for at least a quarter less mean compute, there and at every more cautious threshold."""
    variants = ladder(1, 2)
    small, big = variants[0], variants[1]
    plans = plan_cascades(variants, max_plans=0)
    assert [(p.small, p.big) for p in plans][:1] == [("small", "big")]
    plan = plans[0]
    accuracy, _ = simulate(small.search, big.search, plan.threshold)
    assert accuracy >= big.search.accuracy and plan.cost_seconds <= (1 - MIN_SAVING) * big.cost_seconds
    higher = [t for t in THRESHOLDS if t > plan.threshold]
    assert all(simulate(small.search, big.search, t)[0] >= big.search.accuracy for t in higher)
    lower = [t for t in THRESHOLDS if t < plan.threshold]
    assert not lower or simulate(small.search, big.search, lower[-1])[0] < big.search.accuracy


def test_a_match_holds_at_every_more_cautious_threshold() -> None:
    """As accurate as big at 0.10-0.30 and again from 0.55 up, but not between: 0.55."""
    # (top score, small right, big right): sure and right where big is not; unsure at 0.5 and
    # wrong where big is right (the dip); 0.3 and right where big is not; five both get right.
    images = [(0.95, True, False), (0.5, False, True), (0.5, False, True)]
    images += [(0.3, True, False)] * 2 + [(0.95, True, True)] * 5
    small = answers([s for s, _, _ in images], [r for _, r, _ in images])
    big = answers([0.9] * len(images), [r for _, _, r in images])
    assert simulate(small, big, 0.1)[0] >= big.accuracy > simulate(small, big, 0.4)[0]
    plan = match(
        Scored("small", "imagenet-1k", 0.002, 0.6, small, small),
        Scored("big", "imagenet-1k", 0.01, 0.77, big, big),
    )
    assert plan == (0.55, pytest.approx(0.002 + 0.4 * 0.01))


def test_no_matching_plan_without_the_saving() -> None:
    small, big, _ = ladder(1, 2)
    dear = Scored(small.name, small.labels, 0.009, small.top1, small.search, small.held_out)
    assert match(small, big) is not None
    assert match(dear, big) is None
