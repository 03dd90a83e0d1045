"""How far above its point prediction a request's total may run, at the quantile the promise needs.

A request's total is the time spent before its variant is chosen, its *service* (decode +
inference on a worker) and its *wait*: for a worker, and for the event loop to send the answer
once the worker is done. Each part is predicted at its typical
value (the point prediction) and is biased and noisy in ways no part models: server overhead,
scheduling, spikes of the shared cores, a profile a little off. Instead of stacking quantiles of
the parts (each pessimistic on its own, far too pessimistic summed), the margins are calibrated
on the answers themselves, split conformal style:

- **Service**, per variant, with scores centred per variant: a variant's *location* is the
  median of its own recent service residuals (measured service minus point prediction): a few
  answers fix it, one spike does not move it, and it is what differs most between variants. The
  *spread* around it is shared: every variant's residuals less their location. What spreads a
  service most, a pre-empted core, adds the same time to any variant (scaled per variant, the
  spikes of the small ones priced the large ones out), and a 0.99 quantile
  needs hundreds of answers, which no single variant has until it has been chosen for seconds.
  Service margin = location + the spread's quantile. Every answer teaches it, with or without a
  budget. A variant with too few answers of its own takes everyone's location; residuals age
  out, so a variant not chosen lately is priced like any other and chosen, and so re-measured,
  whenever that says it fits.
- **Wait**, per budget tier: how much longer than predicted recent requests of the tier waited
  (other tiers go first or are held back differently). It is load's, not a variant's: counted in
  the service, an overloaded event loop's lag made the variants that ran through it look slow,
  and the variants that had not run lately the fastest.
- **The promise**, per budget tier: a request's bound is its variant's point and location plus
  one quantile of the tier's recent *totals'* scores (each answer's service less its variant's
  location, plus its wait error), not the service spread's quantile and the wait's stacked.
  Under load both tails are long and rarely meet in one answer: stacked, they priced everything
  but the smallest subnet out of budgets the larger ones met. Until the tier has
  ``MIN_TIER_SCORES`` of its own, it takes every tier's: priced from its first few scores (or,
  before those, the two margins stacked), the first budget asked in a tier got the smallest
  subnets where the same answers a moment later fit larger ones. Stacked only while all tiers
  together have fewer than ``MIN_SPREAD``.
  The schedule's run time of a job is its point plus its service margin alone
  (``service_margin``): a wait played forward over jobs ahead is the wait's business.
- **Idle or busy.** A request priced with nothing queued or running runs on cores no other
  inference contends for, and waits for nothing: its service spreads far less than one priced
  under load. Such a request is priced from the spread and total scores of answers priced the
  same way (Mondrian conformal prediction: calibrated per category), once there are
  ``MIN_SPREAD`` of them, from everyone's before; the others from everyone's. Pooled, a burst of
  load held every margin wide for the minute its residuals stayed fresh, and the sequential
  requests after it got the smallest subnets. The idle answers' total scores carry no load, so
  they stay fresh as long as the services' residuals.
- **The level**, per budget tier, is steered by the tier's own misses (adaptive conformal
  inference, Gibbs and Candes 2021): each miss raises the quantile, each answer on time lowers
  it a little, so that over time the tier misses at the promised rate and no less. A fallback,
  priced past its budget, teaches whether it came after its price: when none fits, a level that
  only misses could move would stay where it priced everything out. A bound at
  the 0.99 quantile for every request misses far less than 1 % of a tier's answers, because
  most requests are not at the edge of their budget, and each of those unspent misses is a
  more accurate variant not chosen; the promise is about the answers, not each bound.

The quantiles use the finite-sample correction (the ceil((n + 1) q)-th smallest).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from service.core.latency import Recent, ranked
from service.core.schedule import tier_name

# The share of answers a bound may be exceeded by: the promise is "met on 99 % of requests".
PROMISE_QUANTILE = 0.99
# A location counts from this many answers on.
MIN_OWN = 8
# The spread counts from this many answers on (fewer say little about a 0.99 quantile).
MIN_SPREAD = 64
# A tier's own total scores count from this many on: from fewer, a 0.99 quantile is their
# largest or next to it, one stall's.
MIN_TIER_SCORES = 256
# The margin before there are that many, as a fraction of the point prediction.
FIRST_MARGIN_FRACTION = 1.0
# Answers behind a variant's location, and behind everyone's.
OWN_WINDOW = 64
ALL_WINDOW = 256
# How far one answer moves its tier's level (adaptive conformal inference's step), and the
# levels it may take: never looser than a 0.95 quantile, never as tight as the largest residual
# (a few misses at a budget nothing meets reliably priced everything but the smallest subnets
# out of the budgets after it in the tier).
LEVEL_STEP = 0.002
LEVELS = (0.95, 0.995)


def conformal_quantile(ordered: Sequence[float], q: float) -> float:
    """The split-conformal ``q`` quantile of sorted residuals: the ceil((n + 1) q)-th smallest, so
    a new residual exceeds it with probability at most 1 - q; the largest when n is too small for
    that."""
    return ordered[min(len(ordered), math.ceil((len(ordered) + 1) * q)) - 1]


def lesson(total: float, budget: float, bound: float, saved: float) -> bool | None:
    """What an answer ``total`` seconds long teaches its tier's level: whether it came after both
    its budget and its ``bound`` (a fallback, priced past its budget, teaches whether that price
    was too dear); nothing (None) when it would have been late even with the ``saved`` seconds of
    service the fastest variant was predicted to take less: under load the shared cores' stalls
    make a few answers late whatever runs, and counted, they drove the level to its top and every
    choice to the smallest subnet, which missed as often."""
    late = total > max(budget, bound)
    return None if late and total - saved > budget else late


def location(residuals: Sequence[float]) -> float | None:
    """The median of sorted residuals; None with fewer than ``MIN_OWN``."""
    return ranked(residuals, 0.5) if len(residuals) >= MIN_OWN else None


class Calibration:
    """Recent service residuals (each variant's, everyone's, the shared spread) and queue-wait
    errors per budget tier; not thread-safe."""

    def __init__(
        self,
        *,
        window: int,
        fresh_seconds: float,
        load_fresh_seconds: float | None = None,
        idle_window: int | None = None,
        quantile: float = PROMISE_QUANTILE,
        level_step: float = LEVEL_STEP,
    ) -> None:
        """Residuals count for ``fresh_seconds``; the tiers' waits and total scores, which carry
        the load of the moment, for ``load_fresh_seconds`` (default: the same). The answers
        priced idle keep up to ``idle_window`` (default: ``window``): they carry no load, only
        the machine at rest, and a tail quantile over few of them moved with each answer that
        came and went, so that a budget asked twice in a row got a different mix of variants."""
        self.window = window
        self.fresh_seconds = fresh_seconds
        self.load_fresh_seconds = fresh_seconds if load_fresh_seconds is None else load_fresh_seconds
        self.quantile = quantile
        self.level_step = level_step
        self._own: dict[str, Recent] = {}
        self._all = Recent(window=ALL_WINDOW, fresh_seconds=fresh_seconds)
        self._spread = Recent(window=window, fresh_seconds=fresh_seconds)
        idle_window = window if idle_window is None else idle_window
        self._idle_spread = Recent(window=idle_window, fresh_seconds=fresh_seconds)
        self._waits: dict[str, Recent] = {}
        self._totals: dict[str, Recent] = {}
        self._all_totals = Recent(window=window, fresh_seconds=self.load_fresh_seconds)
        self._idle_totals = Recent(window=idle_window, fresh_seconds=fresh_seconds)
        self._levels: dict[str, float] = {}

    def observe(
        self,
        variant: str,
        service_residual: float,
        budget_seconds: float | None,
        wait_error: float | None,
        late: bool | None,
        now: float,
        *,
        idle: bool = False,
    ) -> None:
        """An answer: its service less the point prediction it was chosen with, and (for a
        budgeted request) how much longer than predicted it waited (None: it was queued past hope,
        behind every on-time job, and no wait was predicted); ``late``: whether it came after
        both its budget and its bound (None: pinned, or no budget). Within budget, it kept the
        promise; within a bound priced past the budget (a fallback), that bound was not too low.
        ``idle``: it was priced with nothing queued or running."""
        own = self._own.get(variant)
        if own is None:
            own = self._own[variant] = Recent(window=OWN_WINDOW, fresh_seconds=self.fresh_seconds)
        # Spread only around a location of its own: around everyone's, it would hold the
        # variants' differences.
        centre = location(own.fresh(now))
        if centre is not None:
            self._spread.add(service_residual - centre, now)
            if idle:
                self._idle_spread.add(service_residual - centre, now)
        if centre is None:
            centre = location(self._all.fresh(now))
        own.add(service_residual, now)
        self._all.add(service_residual, now)
        if budget_seconds is None:
            return
        tier = tier_name(budget_seconds)
        if wait_error is not None:
            self._tier_recent(self._waits, tier).add(wait_error, now)
            if centre is not None:
                score = service_residual - centre + wait_error
                self._tier_recent(self._totals, tier).add(score, now)
                self._all_totals.add(score, now)
                if idle:
                    self._idle_totals.add(score, now)
        if late is not None:
            level = self._levels.get(tier, self.quantile) + self.level_step * (late - (1 - self.quantile))
            self._levels[tier] = min(LEVELS[1], max(LEVELS[0], level))

    def _tier_recent(self, pools: dict[str, Recent], tier: str) -> Recent:
        recent = pools.get(tier)
        if recent is None:
            recent = pools[tier] = Recent(window=self.window, fresh_seconds=self.load_fresh_seconds)
        return recent

    def level(self, budget_seconds: float | None) -> float:
        """The quantile the bounds of a budget's tier are priced at now; without a budget, the
        promise's."""
        return (
            self.quantile
            if budget_seconds is None
            else self._levels.get(tier_name(budget_seconds), self.quantile)
        )

    def _centre(self, variant: str, now: float) -> float | None:
        """``variant``'s location; everyone's while it has too few answers of its own."""
        own = self._own.get(variant)
        centre = None if own is None else location(own.fresh(now))
        return location(self._all.fresh(now)) if centre is None else centre

    def service_margin(
        self,
        variant: str,
        point: float,
        budget_seconds: float | None,
        now: float,
        level: float | None = None,
        *,
        idle: bool = False,
    ) -> float:
        """What to add to ``variant``'s point prediction of its service, at ``level`` (default: the
        budget's), for a request priced ``idle`` or not."""
        centre = self._centre(variant, now)
        spread = self._idle_spread.fresh(now) if idle else []
        if len(spread) < MIN_SPREAD:
            spread = self._spread.fresh(now)
        if centre is None or len(spread) < MIN_SPREAD:
            return FIRST_MARGIN_FRACTION * point
        return centre + conformal_quantile(spread, self.level(budget_seconds) if level is None else level)

    def promise_margin(
        self,
        variant: str,
        point: float,
        budget_seconds: float | None,
        now: float,
        level: float | None = None,
        *,
        idle: bool = False,
    ) -> float:
        """What to add to ``variant``'s point prediction and the predicted wait for the bound its
        answer keeps at ``level`` (default: the budget's): its location plus the quantile of the
        total scores of the answers priced idle (for a request priced ``idle``, once there are
        enough), else of the tier's (every tier's while it has too few); the service and wait
        margins stacked while none has enough."""
        scores = self._total_scores(budget_seconds, now, idle)
        centre = self._centre(variant, now)
        if centre is None or len(scores) < MIN_SPREAD:
            return self.service_margin(
                variant, point, budget_seconds, now, level, idle=idle
            ) + self.wait_margin(budget_seconds, now, level)
        return centre + conformal_quantile(scores, self.level(budget_seconds) if level is None else level)

    def on_time_share(
        self,
        variant: str,
        point: float,
        slack: float,
        budget_seconds: float,
        now: float,
        *,
        idle: bool = False,
    ) -> float | None:
        """The share of ``variant``'s answers predicted to take at most ``slack`` seconds beyond
        the time spent and the predicted wait (the budget less those), ``point`` its point
        prediction: of the total scores its bound is priced from, those within ``slack`` less the
        point and its location, out of one more (a new score is as likely to fall in any of the
        gaps). None while bounds are stacked (too few answers to say)."""
        scores = self._total_scores(budget_seconds, now, idle)
        centre = self._centre(variant, now)
        if centre is None or len(scores) < MIN_SPREAD:
            return None
        return bisect_right(scores, slack - point - centre) / (len(scores) + 1)

    def _total_scores(self, budget_seconds: float | None, now: float, idle: bool) -> Sequence[float]:
        """The sorted total scores a budget's bounds are priced from (``promise_margin``)."""
        scores = self._idle_totals.fresh(now) if idle and budget_seconds is not None else []
        if len(scores) < MIN_SPREAD:
            totals = None if budget_seconds is None else self._totals.get(tier_name(budget_seconds))
            scores = [] if totals is None else totals.fresh(now)
            if len(scores) < MIN_TIER_SCORES and budget_seconds is not None:
                scores = self._all_totals.fresh(now)
        return scores

    def wait_margin(self, budget_seconds: float | None, now: float, level: float | None = None) -> float:
        """What to add to a request's predicted queue wait at ``level`` (default: the budget's):
        never negative, 0 without errors."""
        waits = None if budget_seconds is None else self._waits.get(tier_name(budget_seconds))
        errors = None if waits is None else waits.fresh(now)
        if not errors:
            return 0.0
        return max(0.0, conformal_quantile(errors, self.level(budget_seconds) if level is None else level))
