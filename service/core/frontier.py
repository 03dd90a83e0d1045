"""This device's frontier: which candidates of the store a server serves.

Pure: the caller measures each candidate here (its idle cost at the promised quantile) and says
which failed their on-device checks. The store is a pool; what is on the frontier depends on the
CPU (int8 is fast with dot-product instructions and slow without them), so every device chooses
its own, as Once-for-All specialises a subnet per target.

A candidate is **dominated** when a more accurate one kept is not more than ``SPEED_STEP``
slower here (or an equally accurate one is faster): a variant is served for being faster than
everything more accurate, and a smaller lead than that is within this device's noise (profiles of
one variant differ by several percent between starts). Such a pair gives the selector a choice it
cannot make reliably: the faster one fits alone only in a sliver of budgets that moves with the
noise, and under load it answers for a lead that does not hold, a subnet far less accurate than
its neighbour. It is dominated too when a more accurate one kept gives at least as many correct
answers per second of a worker (top-1 over seconds): under load, when the queue outgrows what any
choice keeps on time, the selector answers with the fastest variants, and such a one would answer
the most requests with the fewest correct answers for the worker time; at idle, what is lost is
the budgets between the two, where the fallback answers with the more accurate one, on time less
often. On a CPU where decoding is most of a small variant's time, a subnet that cuts blocks saves
little time and costs much accuracy: the subnets that stay are the ones really faster here. A
request's ``max_size=`` then chooses among the frontier. A variant of unknown accuracy is never
dominated (nothing is known to beat it) and never dominates. When more than ``size`` candidates
are left, the frontier is thinned to ``size`` by dropping, one at a time, the candidate whose
accuracy step over the next faster one kept is the smallest: the fastest and the most accurate
always stay, and so do variants of unknown accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# Why a candidate of the store is not served: ``excluded`` (not among ``EDGEFIT_VARIANTS``),
# ``unavailable`` (a file of its failed verification or loading), ``int8_check_failed`` (its
# agreement with its fp32 twin on the store's reference set fell on this device), ``dominated``
# and ``frontier_size`` (see the module docstring).
Reason = Literal["excluded", "unavailable", "int8_check_failed", "dominated", "frontier_size"]


@dataclass(frozen=True)
class Point:
    """A candidate as measured here: its accuracy and its idle seconds (the caller's measure)."""

    top1: float | None
    seconds: float


@dataclass(frozen=True)
class Left:
    """A candidate not served, and why (``detail``: in words, naming what beat it)."""

    reason: Reason
    detail: str


# A variant is kept only when it is faster than every more accurate one kept by more than this
# share of their time (and gives more correct answers per second than each).
SPEED_STEP = 0.1
# The rule in words: a choice cached under another rule is made again.
RULE = f"more than {SPEED_STEP:.0%} faster and more correct answers per second than the more accurate"


def choose(points: Mapping[str, Point], size: int) -> tuple[list[str], dict[str, Left]]:
    """The candidates to serve (fastest first) and why each other one is not; ``size`` >= 1."""
    left: dict[str, Left] = {}
    # Going down from the most accurate, the last one kept: the fastest of those kept so far and,
    # as each one kept gives more correct answers per second than those before it, the best of
    # them at that too.
    last: str | None = None
    for name in sorted(
        (n for n in points if points[n].top1 is not None),
        key=lambda n: (-_top1(points[n]), points[n].seconds, n),
    ):
        point = points[name]
        if last is None or not beats(points[last], point):
            last = name
            continue
        by = points[last]
        how = (
            f"not {SPEED_STEP * 100:.0f} % slower here ({_ms(by.seconds)} vs {_ms(point.seconds)})"
            if by.seconds <= point.seconds * (1 + SPEED_STEP)
            else "gives at least as many correct answers per second of a worker here "
            f"({_per_second(by):.0f} vs {_per_second(point):.0f})"
        )
        left[name] = Left(
            "dominated",
            f"{last} is at least as accurate ({_percent(by.top1)} vs {_percent(point.top1)}) and {how}",
        )
    kept = sorted((n for n in points if n not in left), key=lambda n: (points[n].seconds, n))
    ranked = [n for n in kept if points[n].top1 is not None]
    while len(kept) > size and len(ranked) > 2:
        # The interior candidate adding least accuracy over the faster one kept before it.
        step, name = min(
            (_top1(points[ranked[i]]) - _top1(points[ranked[i - 1]]), ranked[i])
            for i in range(1, len(ranked) - 1)
        )
        ranked.remove(name)
        kept.remove(name)
        left[name] = Left(
            "frontier_size",
            f"on this device's frontier, but at most {size} variants are served "
            f"(EDGEFIT_FRONTIER_SIZE) and it adds the least: {step * 100:+.1f} points over the "
            "next faster one",
        )
    return kept, left


def beats(a: Point, b: Point) -> bool:
    """Whether ``a`` leaves ``b`` out: both of known accuracy, ``a`` at least as accurate, and
    either not more than ``SPEED_STEP`` slower or giving at least as many correct answers per
    second of a worker."""
    if a.top1 is None or b.top1 is None or a.top1 < b.top1:
        return False
    return a.seconds <= b.seconds * (1 + SPEED_STEP) or _per_second(a) >= _per_second(b)


def _top1(point: Point) -> float:
    return -1.0 if point.top1 is None else point.top1


def _per_second(point: Point) -> float:
    """Correct answers per second of a worker, at its top-1 and seconds."""
    return _top1(point) / point.seconds


def _percent(top1: float | None) -> str:
    return "unknown" if top1 is None else f"{top1 * 100:.1f} %"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
