"""How far above its point prediction a request's total may run, at the quantile the promise needs.

The point prediction of a variant's total (time spent so far + predicted queue wait + decode +
inference, each part at its typical value) is biased and noisy in ways no part models: server
overhead, scheduling, spikes of the shared cores, a profile a little off. Instead of stacking
quantiles of the parts (each pessimistic on its own, far too pessimistic summed), the margin is
calibrated on the answers themselves: split conformal prediction with scores normalised per
variant (locally weighted conformal).

- A variant's *location* and *scale* are the median and the interquartile range of its own recent
  residuals (total minus point prediction): a few dozen answers fix both, one spike moves
  neither, and they are what differs between variants (an int8 variant's totals spread wider
  than an fp32 one's of the same speed).
- The *score* of an answer is its residual less its variant's location, over its scale; scores
  of every variant's answers are pooled. A 0.99 quantile needs hundreds of answers, which no
  single variant has until it has been chosen for seconds.

margin = location + scale x the scores' ``q`` quantile (with the finite-sample correction), so
point + margin is exceeded at about the promised rate. A variant with too few answers of its own
takes the location and scale of everyone's. Residuals age out, so a variant not chosen lately is
priced like any other again, and chosen, and so re-measured, whenever that says it fits: no
estimate stays stale. The point prediction follows the machine's speed already, so residuals may
be kept for a while. Requests without a budget have nothing to calibrate and teach nothing (they
are overtaken by design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.latency import Recent, ranked

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# A location and scale count from this many answers on.
MIN_OWN = 16
# The scores count from this many on (fewer say little about a 0.99 quantile).
MIN_SCORES = 64
# The margin before there are that many, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 1.0
# Answers behind a variant's location and scale, and behind everyone's.
OWN_WINDOW = 64
ALL_WINDOW = 256
# No scale below this: a run of identical residuals must not make every score infinite.
MIN_SCALE_SECONDS = 0.0001


def conformal_quantile(ordered: Sequence[float], q: float) -> float:
    """The split-conformal ``q`` quantile of sorted residuals: the ceil((n + 1) q)-th smallest, so
    a new residual exceeds it with probability at most 1 - q; the largest when n is too small for
    that."""
    return ordered[min(len(ordered), math.ceil((len(ordered) + 1) * q)) - 1]


def location_scale(residuals: Sequence[float]) -> tuple[float, float] | None:
    """Median and interquartile range of sorted residuals; None with fewer than ``MIN_OWN``."""
    if len(residuals) < MIN_OWN:
        return None
    return ranked(residuals, 0.5), max(MIN_SCALE_SECONDS, ranked(residuals, 0.75) - ranked(residuals, 0.25))


class Calibration:
    """Residuals of recent budgeted answers, each variant's and everyone's, and their pooled
    scores; not thread-safe."""

    def __init__(self, *, window: int, fresh_seconds: float, quantile: float = PROMISE_QUANTILE) -> None:
        self.fresh_seconds = fresh_seconds
        self.quantile = quantile
        self._own: dict[str, Recent] = {}
        self._all = Recent(window=ALL_WINDOW, fresh_seconds=fresh_seconds)
        self._scores = Recent(window=window, fresh_seconds=fresh_seconds)

    def observe(self, budget_seconds: float | None, variant: str, residual: float, now: float) -> None:
        """An answer's ``residual``: its total minus the point prediction it was chosen with."""
        if budget_seconds is None:
            return
        own = self._own.get(variant)
        if own is None:
            own = self._own[variant] = Recent(window=OWN_WINDOW, fresh_seconds=self.fresh_seconds)
        # Scored only against its own location and scale: against everyone's, the scores would
        # hold the variants' differences.
        fitted = location_scale(own.fresh(now))
        if fitted is not None:
            location, scale = fitted
            self._scores.add((residual - location) / scale, now)
        own.add(residual, now)
        self._all.add(residual, now)

    def margin(self, variant: str, point: float, now: float) -> float:
        """What to add to ``variant``'s ``point`` prediction for a bound at the promised quantile."""
        own = self._own.get(variant)
        fitted = None if own is None else location_scale(own.fresh(now))
        fitted = fitted or location_scale(self._all.fresh(now))
        scores = self._scores.fresh(now)
        if fitted is None or len(scores) < MIN_SCORES:
            return FIRST_MARGIN_FRACTION * point
        location, scale = fitted
        return location + scale * conformal_quantile(scores, self.quantile)
