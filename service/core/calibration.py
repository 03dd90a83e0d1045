"""How far above its point prediction a request's total may run, at the quantile the promise needs.

The point prediction of a variant's total (time spent so far + predicted queue wait + decode +
inference, each part at its typical value) is biased and noisy in ways no part models: server
overhead, scheduling, spikes of the shared cores, a profile a little off. Instead of stacking
quantiles of the parts (each pessimistic on its own, far too pessimistic summed), the margin is
calibrated on the answers themselves, split conformal style: the residual of every answer
(its total minus its point prediction) is kept per variant, and the margin is the
residuals' ``q`` quantile with the finite-sample correction, so the bound point + margin is
exceeded at about the promised rate by that variant's own answers.

A variant with too few recent answers of its own borrows every variant's (in seconds, not
relative to the point: what spreads a total most, a pre-empted core or a slow event loop, adds
the same time to any variant, and scaled by the point it would price the largest variants out
after one spike of a small one's), and with none at all a fixed fraction of the point. Residuals
age out, so a variant not chosen lately is judged by the others' again and gets chosen, and so
re-measured, whenever that says it fits: no estimate stays stale. Their point prediction follows
the machine's speed already, so they may be kept for a while. Requests without a budget have
nothing to calibrate and teach nothing (they are overtaken by design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.latency import Recent

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# Residuals are used from this many on (fewer say little about a 0.99 quantile: it is their
# largest, and one spike of the shared cores would decide every choice).
MIN_RESIDUALS = 64
# The margin before there are that many, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 0.3


def conformal_quantile(ordered: Sequence[float], q: float) -> float:
    """The split-conformal ``q`` quantile of sorted residuals: the ceil((n + 1) q)-th smallest, so
    a new residual exceeds it with probability at most 1 - q; the largest when n is too small for
    that."""
    return ordered[min(len(ordered), math.ceil((len(ordered) + 1) * q)) - 1]


class Calibration:
    """Residuals of recent budgeted answers, per variant and of all; not thread-safe."""

    def __init__(self, *, window: int, fresh_seconds: float, quantile: float = PROMISE_QUANTILE) -> None:
        self.window = window
        self.fresh_seconds = fresh_seconds
        self.quantile = quantile
        self._own: dict[str, Recent] = {}
        self._all = self._new()

    def _new(self) -> Recent:
        return Recent(window=self.window, fresh_seconds=self.fresh_seconds)

    def observe(self, budget_seconds: float | None, variant: str, residual: float, now: float) -> None:
        """An answer's ``residual``: its total minus the point prediction it was chosen with."""
        if budget_seconds is None:
            return
        self._own.setdefault(variant, self._new()).add(residual, now)
        self._all.add(residual, now)

    def margin(self, variant: str, point: float, now: float) -> float:
        """What to add to ``variant``'s ``point`` prediction for a bound at the promised quantile."""
        own = self._own.get(variant)
        for recent in (own, self._all):
            residuals = None if recent is None else recent.fresh(now)
            if residuals is not None and len(residuals) >= MIN_RESIDUALS:
                return conformal_quantile(residuals, self.quantile)
        return FIRST_MARGIN_FRACTION * point
