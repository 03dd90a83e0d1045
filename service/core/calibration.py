"""How far above its point prediction a request's total may run, at the quantile the promise needs.

A request's total is the time spent before its variant is chosen, its queue wait, and its
*service*: decode + inference on a worker, and the answer. Each part is predicted at its typical
value (the point prediction) and is biased and noisy in ways no part models: server overhead,
scheduling, spikes of the shared cores, a profile a little off. Instead of stacking quantiles of
the parts (each pessimistic on its own, far too pessimistic summed), the margins are calibrated
on the answers themselves, split conformal style:

- **Service**, per variant, with scores normalised per variant (locally weighted conformal): a
  variant's *location* and *scale* are the median and interquartile range of its own recent
  service residuals (measured service minus point prediction): a few dozen answers fix both, one
  spike moves neither, and they are what differs between variants (an int8 variant's totals
  spread wider than an fp32 one's of the same speed). The *score* of an answer is its residual
  less its variant's location, over its scale; every variant's scores are pooled, since a 0.99
  quantile needs hundreds of answers. Service margin = location + scale x the scores' quantile.
  Every answer teaches it, with or without a budget. A variant with too few answers of its own
  takes everyone's location and scale; residuals age out within seconds, so a variant not chosen
  lately is priced like any other and chosen, and so re-measured, whenever that says it fits,
  and what a burst of load taught the variants it ran is forgotten soon after.
- **Wait**, per budget tier: how much longer than predicted recent requests of the tier queued
  (other tiers go first or are held back differently). Zero while nothing queues.

The quantiles use the finite-sample correction (the ceil((n + 1) q)-th smallest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.latency import Recent, ranked
from service.core.schedule import tier_name

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# A location and scale count from this many answers on.
MIN_OWN = 16
# The scores count from this many on (fewer say little about a 0.99 quantile).
MIN_SCORES = 64
# The margin before there are that many, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 1.0
# Answers behind a variant's location and scale, and behind everyone's, and how long they count.
OWN_WINDOW = 64
ALL_WINDOW = 256
LOCATION_FRESH_SECONDS = 5.0
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
    """Recent service residuals (each variant's, everyone's, their pooled scores) and queue-wait
    errors per budget tier; not thread-safe."""

    def __init__(self, *, window: int, fresh_seconds: float, quantile: float = PROMISE_QUANTILE) -> None:
        self.window = window
        self.fresh_seconds = fresh_seconds
        self.quantile = quantile
        self._own: dict[str, Recent] = {}
        self._all = Recent(window=ALL_WINDOW, fresh_seconds=LOCATION_FRESH_SECONDS)
        self._scores = Recent(window=window, fresh_seconds=fresh_seconds)
        self._waits: dict[str, Recent] = {}

    def observe(
        self,
        variant: str,
        service_residual: float,
        budget_seconds: float | None,
        wait_error: float,
        now: float,
    ) -> None:
        """An answer: its service less the point prediction it was chosen with, and (for a
        budgeted request) how much longer than predicted it queued."""
        own = self._own.get(variant)
        if own is None:
            own = self._own[variant] = Recent(window=OWN_WINDOW, fresh_seconds=LOCATION_FRESH_SECONDS)
        # Scored only against its own location and scale: against everyone's, the scores would
        # hold the variants' differences.
        fitted = location_scale(own.fresh(now))
        if fitted is not None:
            location, scale = fitted
            self._scores.add((service_residual - location) / scale, now)
        own.add(service_residual, now)
        self._all.add(service_residual, now)
        if budget_seconds is not None:
            waits = self._waits.get(tier_name(budget_seconds))
            if waits is None:
                waits = self._waits[tier_name(budget_seconds)] = Recent(
                    window=self.window, fresh_seconds=self.fresh_seconds
                )
            waits.add(wait_error, now)

    def service_margin(self, variant: str, point: float, now: float) -> float:
        """What to add to ``variant``'s point prediction of its service for the promised quantile."""
        own = self._own.get(variant)
        fitted = None if own is None else location_scale(own.fresh(now))
        fitted = fitted or location_scale(self._all.fresh(now))
        scores = self._scores.fresh(now)
        if fitted is None or len(scores) < MIN_SCORES:
            return FIRST_MARGIN_FRACTION * point
        location, scale = fitted
        return location + scale * conformal_quantile(scores, self.quantile)

    def wait_margin(self, budget_seconds: float | None, now: float) -> float:
        """What to add to a request's predicted queue wait: never negative, 0 without errors."""
        waits = None if budget_seconds is None else self._waits.get(tier_name(budget_seconds))
        errors = None if waits is None else waits.fresh(now)
        return max(0.0, conformal_quantile(errors, self.quantile)) if errors else 0.0
