"""How far above its point prediction a request's total may run, at the quantile the promise needs.

The point prediction of a variant's total (time spent so far + predicted queue wait + decode +
inference, each part at its typical value) is biased and noisy in ways no part models: server
overhead, scheduling, spikes of the shared cores, a profile a little off. Instead of stacking
quantiles of the parts (each pessimistic on its own, far too pessimistic summed), the margin is
calibrated on the answers themselves, split conformal style, with scores centred per variant:

- a variant's *bias* is the median of its recent residuals (total minus point prediction): a
  few answers fix it, and it is what differs most between variants;
- the *spread* around it is shared: the residuals less their variant's bias, of every variant's
  answers. What spreads a total most, a pre-empted core or a slow event loop, adds the same time
  to any variant, and a 0.99 quantile needs hundreds of answers, which no single variant has
  until it has been chosen for seconds (one spike would otherwise decide its price).

margin = bias + the spread's ``q`` quantile (with the finite-sample correction), so point +
margin is exceeded at about the promised rate. A variant with too few answers of its own takes
every variant's bias. Residuals age out, so a variant not chosen lately is judged like any other
again, and chosen, and so re-measured, whenever that says it fits: no estimate stays stale. The
point prediction follows the machine's speed already, so residuals may be kept for a while.
Requests without a budget have nothing to calibrate and teach nothing (they are overtaken by
design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.latency import Recent

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# A variant's own bias counts from this many answers on.
MIN_OWN = 8
# The spread counts from this many answers on (fewer say little about a 0.99 quantile).
MIN_SPREAD = 64
# The margin before there are that many, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 1.0
# Answers behind a variant's bias.
OWN_WINDOW = 64


def conformal_quantile(ordered: Sequence[float], q: float) -> float:
    """The split-conformal ``q`` quantile of sorted residuals: the ceil((n + 1) q)-th smallest, so
    a new residual exceeds it with probability at most 1 - q; the largest when n is too small for
    that."""
    return ordered[min(len(ordered), math.ceil((len(ordered) + 1) * q)) - 1]


class Calibration:
    """Residuals of recent budgeted answers: each variant's, and the shared spread; not
    thread-safe."""

    def __init__(self, *, window: int, fresh_seconds: float, quantile: float = PROMISE_QUANTILE) -> None:
        self.fresh_seconds = fresh_seconds
        self.quantile = quantile
        self._own: dict[str, Recent] = {}
        self._all = Recent(window=OWN_WINDOW, fresh_seconds=fresh_seconds)
        self._spread = Recent(window=window, fresh_seconds=fresh_seconds)

    def _bias(self, variant: str, now: float) -> float | None:
        own = self._own.get(variant)
        bias = None if own is None else own.quantile(0.5, now, MIN_OWN)
        return self._all.quantile(0.5, now, MIN_OWN) if bias is None else bias

    def observe(self, budget_seconds: float | None, variant: str, residual: float, now: float) -> None:
        """An answer's ``residual``: its total minus the point prediction it was chosen with."""
        if budget_seconds is None:
            return
        own = self._own.get(variant)
        if own is None:
            own = self._own[variant] = Recent(window=OWN_WINDOW, fresh_seconds=self.fresh_seconds)
        # Spread only around a bias of its own: around everyone's, it would be the variants' gaps.
        bias = own.quantile(0.5, now, MIN_OWN)
        if bias is not None:
            self._spread.add(residual - bias, now)
        own.add(residual, now)
        self._all.add(residual, now)

    def margin(self, variant: str, point: float, now: float) -> float:
        """What to add to ``variant``'s ``point`` prediction for a bound at the promised quantile."""
        spread = self._spread.fresh(now)
        bias = self._bias(variant, now)
        if bias is None or len(spread) < MIN_SPREAD:
            return FIRST_MARGIN_FRACTION * point
        return bias + conformal_quantile(spread, self.quantile)
