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
its neighbour. A request's ``max_size=`` then chooses among the frontier. A variant of
unknown accuracy is never dominated (nothing is known to beat it) and never dominates. When more
than ``size`` candidates are left, the frontier is thinned to ``size`` by dropping, one at a time,
the candidate whose accuracy step over the next faster one kept is the smallest: the fastest and
the most accurate always stay, and so do variants of unknown accuracy.
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
# share of their time.
SPEED_STEP = 0.1


def choose(points: Mapping[str, Point], size: int) -> tuple[list[str], dict[str, Left]]:
    """The candidates to serve (fastest first) and why each other one is not; ``size`` >= 1."""
    left: dict[str, Left] = {}
    fastest: str | None = None  # the fastest of the more accurate ones kept so far
    for name in sorted(
        (n for n in points if points[n].top1 is not None),
        key=lambda n: (-_top1(points[n]), points[n].seconds, n),
    ):
        point = points[name]
        if fastest is None or point.seconds * (1 + SPEED_STEP) < points[fastest].seconds:
            fastest = name
            continue
        by = points[fastest]
        left[name] = Left(
            "dominated",
            f"{fastest} is at least as accurate ({_percent(by.top1)} vs {_percent(point.top1)}) "
            f"and not {SPEED_STEP * 100:.0f} % slower here ({_ms(by.seconds)} vs {_ms(point.seconds)})",
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


def _top1(point: Point) -> float:
    return -1.0 if point.top1 is None else point.top1


def _percent(top1: float | None) -> str:
    return "unknown" if top1 is None else f"{top1 * 100:.1f} %"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
