"""Confidence cascade plans from each variant's answers on a labelled sample (pure: stdlib only).

A plan (small, big, threshold) runs ``small`` and answers with it when its top softmax score is
at least the threshold; otherwise ``big`` runs too and answers. Its accuracy and its mean cost
(small + escalation rate x big) follow from the variants' answers image by image, so planning
needs one pass of every variant over the sample, not one per plan.

The sample is split as the store's searches split it (``model_store.evaluate``): every choice
here (which pairs, which threshold, which plans are kept) reads only the *search* half; the
*held-out* half only gives the recorded figures, once a plan is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

# Thresholds tried: a coarse grid, so that a few hundred images choose among few options.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 20))
# A plan is kept only when it beats the single variants at its mean cost by this much on the
# search half: less is within the noise of a few hundred images.
MIN_GAIN = 0.005
# The selector weighs every plan for every request: a handful is enough.
MAX_PLANS = 4
# A plan is also offered where it is as accurate as its big stage alone for at least this share
# less mean compute: idle, where the most accurate candidate that fits wins and a tie goes to the
# one that costs the workers less, it answers instead of the big stage, as well, for less. One
# such plan for each of the ``MAX_MATCHING`` most accurate variants (the top of the staircase).
MIN_SAVING = 0.25
MAX_MATCHING = 2


@dataclass(frozen=True)
class Answers:
    """A variant's answers on one half of the sample, image by image (same order for all)."""

    top_scores: tuple[float, ...]
    correct: tuple[bool, ...]

    @cached_property  # read for every pair and threshold planned
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)


@dataclass(frozen=True)
class Scored:
    """A variant as planning sees it. ``cost_seconds``: its inference on this machine.
    ``labels``: its label set (a cascade needs one class space). ``top1``: the store's figure."""

    name: str
    labels: str
    cost_seconds: float
    top1: float | None
    search: Answers
    held_out: Answers


@dataclass(frozen=True)
class Plan:
    """``small`` answers when its top softmax score is at least ``threshold``; otherwise ``big``
    runs on the same decoded image and answers."""

    small: str
    big: str
    threshold: float
    search_gain: float  # accuracy over the best single variant at no more cost, search half
    cost_seconds: float  # mean, from the search half's escalation rate
    held_out_accuracy: float
    escalation_rate: float  # held-out
    top1: float  # big's top1 + (plan - big) on the held-out half

    @property
    def name(self) -> str:
        """Never a variant's: ``>`` is not allowed in one."""
        return f"{self.small}>{self.big}"


def simulate(small: Answers, big: Answers, threshold: float) -> tuple[float, float]:
    """The plan's accuracy and escalation rate on the images both answered."""
    escalated = [score < threshold for score in small.top_scores]
    right = [b if up else s for up, s, b in zip(escalated, small.correct, big.correct, strict=True)]
    return sum(right) / len(right), sum(escalated) / len(escalated)


def best_single(variants: Sequence[Scored], cost_seconds: float) -> float:
    """The most search-half accuracy at a mean cost of at most ``cost_seconds`` without a
    cascade: one variant, or traffic split at random between two (the line between them).

    Against the single variants alone, any pair mixed at random would look like a gain between
    two steps of their staircase; a plan must owe its gain to the small variant's confidence."""
    best = max((v.search.accuracy for v in variants if v.cost_seconds <= cost_seconds), default=0.0)
    for cheap in variants:
        for dear in variants:
            if cheap.cost_seconds < cost_seconds < dear.cost_seconds:
                share = (cost_seconds - cheap.cost_seconds) / (dear.cost_seconds - cheap.cost_seconds)
                mixed = cheap.search.accuracy + share * (dear.search.accuracy - cheap.search.accuracy)
                best = max(best, mixed)
    return best


def search_point(small: Scored, big: Scored, threshold: float) -> tuple[float, float]:
    """The plan's accuracy and mean cost on the search half."""
    accuracy, escalation = simulate(small.search, big.search, threshold)
    return accuracy, small.cost_seconds + escalation * big.cost_seconds


def calibrate(small: Scored, big: Scored, variants: Sequence[Scored]) -> tuple[float, float, float] | None:
    """The threshold for (``small``, ``big``), read from the search half only: the one whose plan
    beats the best single variant at no more mean cost by the most. Returns (threshold, gain,
    mean cost), or None when no threshold beats them by ``MIN_GAIN``.

    Why this rule: the selector takes the most accurate candidate that fits and, under load,
    prices compute; a plan is worth offering only where it is above the singles' frontier, and
    the height above it is what it adds there. Ties go to the higher threshold (more accurate)."""
    best: tuple[float, float, float] | None = None
    for threshold in THRESHOLDS:
        accuracy, cost = search_point(small, big, threshold)
        gain = accuracy - best_single(variants, cost)
        if gain >= MIN_GAIN and (best is None or gain >= best[1]):
            best = (threshold, gain, cost)
    return best


def match(small: Scored, big: Scored) -> tuple[float, float] | None:
    """The lowest threshold (the least escalation) from which on (``small``, ``big``) is as
    accurate as ``big`` alone at every more cautious threshold on the search half, if its mean
    cost is ``MIN_SAVING`` below big's or more: (threshold, mean cost), or None.

    Not merely the lowest threshold at which it is as accurate: a few hundred images put the
    curve's noise around big's accuracy, and the lowest crossing was where the search half's luck
    ran highest: on the held-out half such plans fell short of big alone, ranked below it and were
    never chosen."""
    found = None
    for threshold in reversed(THRESHOLDS):
        accuracy, cost = search_point(small, big, threshold)
        if accuracy < big.search.accuracy:
            break
        found = (threshold, cost)
    return found if found is not None and found[1] <= (1 - MIN_SAVING) * big.cost_seconds else None


def _matching(
    variants: Sequence[Scored], pairs: Sequence[tuple[Scored, Scored]], taken: set[tuple[str, str]]
) -> list[tuple[Scored, Scored, float, float, float]]:
    """For each of the ``MAX_MATCHING`` most accurate variants that no cheaper one out-answers
    (search half), the cheapest plan matching it (``match``) over one of ``pairs`` not ``taken``:
    (small, big, threshold, gain over the singles at its mean cost, mean cost), as ``calibrate``
    gives them."""

    def out_answered(v: Scored) -> bool:
        return any(
            o.cost_seconds <= v.cost_seconds and o.search.accuracy > v.search.accuracy for o in variants
        )

    tops = [v for v in variants if v.top1 is not None and not out_answered(v)]
    tops.sort(key=lambda v: (-v.search.accuracy, v.cost_seconds, v.name))
    plans = []
    for big in tops[:MAX_MATCHING]:
        found = [
            (small, big, *m)
            for small, dear in pairs
            if dear is big and (small.name, big.name) not in taken and (m := match(small, big))
        ]
        if found:
            small, _, threshold, cost = min(found, key=lambda f: (f[3], f[0].name))
            gain = search_point(small, big, threshold)[0] - best_single(variants, cost)
            plans.append((small, big, threshold, gain, cost))
    return plans


def _pairs(variants: Sequence[Scored]) -> list[tuple[Scored, Scored]]:
    """(small, big): one class space, small cheaper, big more accurate (search half), big's
    accuracy known."""
    return [
        (small, big)
        for small in variants
        for big in variants
        if small.labels == big.labels
        and small.cost_seconds < big.cost_seconds
        and small.search.accuracy < big.search.accuracy
        and big.top1 is not None
    ]


def plan_cascades(variants: Sequence[Scored], max_plans: int = MAX_PLANS) -> list[Plan]:
    """At most ``max_plans`` plans, each beating every single variant at its mean cost (search
    half), none beaten by another kept plan on both gain and cost, the largest gains first; then
    the plans matching the most accurate variants for less (``_matching``). Their recorded figures
    come from the held-out half."""
    pairs = _pairs(variants)
    calibrated = []
    for small, big in pairs:
        found = calibrate(small, big, variants)
        if found is not None:
            calibrated.append((small, big, *found))
    undominated = [
        c
        for c in calibrated
        if not any(o[3] >= c[3] and o[4] <= c[4] and (o[3], o[4]) != (c[3], c[4]) for o in calibrated)
    ]
    undominated.sort(key=lambda c: (-c[3], c[4], c[0].name, c[1].name))
    kept = undominated[:max_plans]
    kept += _matching(variants, pairs, {(small.name, big.name) for small, big, *_ in kept})
    plans = []
    for small, big, threshold, gain, cost in kept:
        accuracy, escalation = simulate(small.held_out, big.held_out, threshold)
        # On the variants' scale, as the store derives a variant's top1 (_pairs: big's is known).
        top1 = min(max((big.top1 or 0.0) + accuracy - big.held_out.accuracy, 0.0), 1.0)
        plans.append(Plan(small.name, big.name, threshold, gain, cost, accuracy, escalation, round(top1, 4)))
    return plans
