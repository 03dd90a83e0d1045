"""How far above its point prediction a request's total may run, at the quantile the promise needs.

The point prediction of a variant's total (time spent so far + predicted queue wait + decode +
inference, each part at its typical value) is biased and noisy in ways no part models: server
overhead, scheduling, spikes of the shared cores, a profile a little off. Instead of stacking
quantiles of the parts (each pessimistic on its own, far too pessimistic summed), the margin is
calibrated on the answers themselves, split conformal style: the residual of every answer
(its total minus its point prediction) is kept per budget tier and variant, and the margin is the
residuals' ``q`` quantile with the finite-sample correction, so the bound point + margin is
exceeded at about the promised rate by that variant's own answers.

A variant with too few recent answers of its own borrows its tier's residuals (in seconds, not
relative to the point: what spreads a total most, a pre-empted core or a slow event loop, adds
the same time to any variant, and scaled by the point it would price the largest variants out
after one spike of a small one's), and with none at all a fixed fraction of the point. Residuals
age out, so a variant not chosen lately is judged by its tier again and gets chosen, and so
re-measured, whenever that says it fits: no estimate stays stale. Requests without a budget
have nothing to calibrate and teach nothing (they are overtaken by design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.latency import Recent
from service.core.schedule import tier_name

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# A variant's own residuals are used from this many on (at fewer, the q quantile is their largest
# and says little).
MIN_OWN_RESIDUALS = 32
# The margin before a tier has any residual, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 0.3


def conformal_quantile(ordered: Sequence[float], q: float) -> float:
    """The split-conformal ``q`` quantile of sorted residuals: the ceil((n + 1) q)-th smallest, so
    a new residual exceeds it with probability at most 1 - q; the largest when n is too small for
    that."""
    return ordered[min(len(ordered), math.ceil((len(ordered) + 1) * q)) - 1]


class Calibration:
    """Residuals of recent answers, per budget tier and variant; not thread-safe."""

    def __init__(self, *, window: int, fresh_seconds: float, quantile: float = PROMISE_QUANTILE) -> None:
        self.window = window
        self.fresh_seconds = fresh_seconds
        self.quantile = quantile
        self._own: dict[tuple[str, str], Recent] = {}
        self._tier: dict[str, Recent] = {}  # every variant of the tier

    def _new(self) -> Recent:
        return Recent(window=self.window, fresh_seconds=self.fresh_seconds)

    def observe(self, budget_seconds: float | None, variant: str, residual: float, now: float) -> None:
        """An answer's ``residual``: its total minus the point prediction it was chosen with."""
        if budget_seconds is None:
            return
        tier = tier_name(budget_seconds)
        self._own.setdefault((tier, variant), self._new()).add(residual, now)
        self._tier.setdefault(tier, self._new()).add(residual, now)

    def margin(self, budget_seconds: float | None, variant: str, point: float, now: float) -> float:
        """What to add to ``variant``'s ``point`` prediction for a bound at the promised quantile."""
        if budget_seconds is None:
            return 0.0
        tier = tier_name(budget_seconds)
        own = self._own.get((tier, variant))
        residuals = None if own is None else own.fresh(now)
        if residuals is not None and len(residuals) >= MIN_OWN_RESIDUALS:
            return conformal_quantile(residuals, self.quantile)
        pooled = self._tier.get(tier)
        residuals = None if pooled is None else pooled.fresh(now)
        if not residuals:
            return FIRST_MARGIN_FRACTION * point
        return conformal_quantile(residuals, self.quantile)
