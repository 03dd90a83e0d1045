"""The selection policy: the most accurate variant predicted to fit the request's budget.

Pure: the caller supplies each candidate's predicted cost; nothing here measures anything.

Under load the choice also weighs what a variant costs the requests behind it. Choosing request
by request, a queue that grows is answered by ever smaller variants until the poorest of them
keep up, and answers are late besides; what counts is correct answers on time per second. So
worker time gets a price that grows with the backlog (drift-plus-penalty, as in Lyapunov
scheduling; Model-Switching's "effective accuracy" is the same aim): the choice maximises
accuracy minus price x predicted service. With no backlog the price is 0 and the most accurate
fitting variant wins; as the backlog grows, the mix shifts to the variants whose service rate
keeps up with the arrivals, the most accurate of those first, and the queue stops growing well
before only the smallest variants fit. The price stops at the accuracy per second of service of
the variant that converts worker time into accuracy best: when more arrives than any mix can
serve, the rest is late or shed whatever is chosen, and what is served should be as many
correct answers per worker-second as the store can give, not the most answers. For the same
reason a request that, at that price, only a worse converter fits in time is refused
(``Saturated``: the server sheds it, 503): served, it would let the queue settle where only the
poorest subnet fits, and parked behind the jobs that can be on time (tried), it was served late
whenever they left a worker free, so that the saturated server spent its workers on late answers.

A confidence cascade plan is a candidate like a variant, with two costs: it must fit the budget
at its worst case (both stages run), and it is weighed at its mean (the second stage runs only
for the images the first is unsure of): that is the compute its choice costs the requests behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# ``contention``: a less accurate variant than the request would get on an idle server, because
# of other requests (its wait at its place in the deadline order, or capacity kept for tighter
# deadlines).
Reason = Literal["best_fit", "pinned", "fallback", "no_budget", "contention"]

# Accuracy given up per second of predicted service is LOAD_PRICE x (backlog / budget)^2 / budget:
# negligible while the queue holds a small part of the budget, decisive well before it holds all
# of it (tests/unit/test_selector.py plays overload out with and without the price).
LOAD_PRICE = 8.0
# A fallback with other requests in the server goes by variants on time at least this often.
LIKELY_ON_TIME = 0.9


@dataclass(frozen=True)
class Candidate:
    """A variant as the selector sees it for one request.

    ``predicted_seconds``: decode + inference for this request's image under current conditions.
    ``idle_seconds``: the same on an idle machine (the profiled table, no contention).
    ``wait_seconds``: predicted queue wait if this variant were chosen (its place in the schedule).
    ``blocks``: this variant would hold back capacity kept for tighter deadlines (see
    ``service.core.schedule.blocks``).
    ``mean_seconds``: set for a cascade plan, whose ``predicted_seconds`` is its worst case
    (both stages): the same at its recorded escalation rate. None for a variant.
    ``on_time``: the calibrated share of answers like this one that would meet the budget from
    its place (``service.core.calibration.Calibration.on_time_share``): what a fallback under
    contention goes by.
    None: not known (too few answers yet, no budget, or a plan).
    ``ranked_top1``: the accuracy the choice ranks it at, where not its ``top1`` (a plan that
    matches its big stage within the figures' noise ranks as that stage: see
    ``service.pricing.MATCH_TOLERANCE``); ``min_accuracy`` still goes by ``top1``.
    """

    name: str
    top1: float | None
    size_bytes: int
    predicted_seconds: float
    idle_seconds: float
    wait_seconds: float = 0.0
    blocks: bool = False
    mean_seconds: float | None = None
    on_time: float | None = None
    ranked_top1: float | None = None

    @property
    def weighed_seconds(self) -> float:
        """What choosing it costs the workers: its mean for a plan, its prediction otherwise."""
        return self.predicted_seconds if self.mean_seconds is None else self.mean_seconds


@dataclass(frozen=True)
class Constraints:
    budget_seconds: float | None = None
    max_size_bytes: int | None = None
    min_accuracy: float | None = None
    pinned: str | None = None
    strict: bool = False
    cascade: bool = True  # the request allows confidence cascade plans


@dataclass(frozen=True)
class Selection:
    name: str
    reason: Reason
    predicted_seconds: float  # time already spent + queue wait + decode + inference


class NoVariantAllowed(Exception):
    """No variant satisfies ``max_size`` / ``min_accuracy`` (or the pinned one violates them)."""


class BudgetUnmeetable(Exception):
    """``strict``: no variant could meet the budget even on an idle server."""


class BudgetUnmeetableNow(Exception):
    """``strict``: a variant could meet the budget on an idle server, but not under current load."""


class Saturated(Exception):
    """Worker time is worth more than what the variants that fit this request in time make of it
    (see ``select``)."""


def _accuracy(candidate: Candidate) -> float:
    if candidate.ranked_top1 is not None:
        return candidate.ranked_top1
    # Unknown accuracy ranks below every known one: never chosen over a measured variant.
    return -1.0 if candidate.top1 is None else candidate.top1


def _yield(c: Candidate) -> float:
    """Accuracy per second of worker time: what choosing it makes of the workers."""
    return _accuracy(c) / c.weighed_seconds


def _rank(c: Candidate) -> tuple[float, float]:
    return (_accuracy(c), -c.predicted_seconds)


def frontier(candidates: Sequence[Candidate], cost: Callable[[Candidate], float]) -> list[Candidate]:
    """The candidates no other beats: none is at least as accurate and at least as cheap by
    ``cost``, and better in one of the two."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (cost(c), -_accuracy(c))):
        if not front or _accuracy(c) > _accuracy(front[-1]):
            front.append(c)
    return front


def load_price(backlog_seconds: float, budget_seconds: float) -> float:
    """Accuracy given up per second of service, with ``backlog_seconds`` of work ahead per worker."""
    return LOAD_PRICE * (backlog_seconds / budget_seconds) ** 2 / budget_seconds


def allowed(candidates: Sequence[Candidate], constraints: Constraints) -> list[Candidate]:
    return [
        c
        for c in candidates
        if (constraints.max_size_bytes is None or c.size_bytes <= constraints.max_size_bytes)
        and (constraints.min_accuracy is None or (c.top1 is not None and c.top1 >= constraints.min_accuracy))
    ]


def unhurried(
    candidates: Sequence[Candidate], constraints: Constraints, *, elapsed_seconds: float
) -> Candidate | None:
    """What a worker free now would give the request: the most accurate allowed variant predicted
    to meet its budget without queueing (ties to the faster). None without a budget, or when no
    allowed variant would meet it even so."""
    budget = constraints.budget_seconds
    if budget is None:
        return None
    pool = allowed(candidates, constraints)
    if constraints.pinned is not None:
        pool = [c for c in pool if c.name == constraints.pinned]
    alone = [c for c in pool if elapsed_seconds + c.predicted_seconds <= budget]
    return max(alone, key=_rank, default=None)


def select(
    candidates: Sequence[Candidate],
    constraints: Constraints,
    *,
    elapsed_seconds: float,
    backlog_seconds: float = 0.0,
    contended: bool = False,
) -> Selection:
    """Choose a variant. Raises ``NoVariantAllowed``, ``BudgetUnmeetable``, ``BudgetUnmeetableNow``,
    ``Saturated``.

    Among the allowed variants predicted to finish within the budget, the one with the most
    accuracy less ``load_price`` x service wins (``backlog_seconds``: the work ahead, per worker;
    without any, simply the most accurate), ties going to the faster; a variant that another
    fitting one beats on both accuracy and total is never chosen, nor one that would hold back
    tighter deadlines while another fits. A plan is weighed at its mean (``weighed_seconds``)
    but fits only at its worst case. Without a budget the most accurate wins. When nothing fits
    (``strict`` refuses instead), an allowed variant (never a plan) answers: on an idle server,
    the fastest, as the contract says; when the server is ``contended`` (other requests queued
    or running), the most accurate on time at least ``LIKELY_ON_TIME`` of the time, else the
    fastest. Saturated (the price at its ceiling) with only worse converters than the store's
    best fitting, the request is refused.
    A choice less accurate than an idle server would make is reported as ``contention``.
    """
    pool = allowed(candidates, constraints)
    if constraints.pinned is not None:
        pool = [c for c in pool if c.name == constraints.pinned]
        if not pool:
            raise NoVariantAllowed(f"variant {constraints.pinned} violates max_size or min_accuracy")
    if not pool:
        raise NoVariantAllowed("no variant satisfies max_size and min_accuracy")

    def total(c: Candidate) -> float:
        return elapsed_seconds + c.wait_seconds + c.predicted_seconds

    def weighed(c: Candidate) -> float:
        # Without the time already spent: the same for every candidate, it orders nothing, and
        # added first it rounds away differences that decide a tie (as ``unhurried`` decides it).
        return c.wait_seconds + c.weighed_seconds

    def considerate(fitting: list[Candidate]) -> list[Candidate]:
        return [c for c in fitting if not c.blocks] or fitting

    budget = constraints.budget_seconds
    if constraints.pinned is not None:
        return Selection(pool[0].name, "pinned", total(pool[0]))
    if budget is None:
        # No deadline to keep: the most accurate; the schedule, not a downgrade, keeps it from
        # taking the workers tighter tiers need.
        best = max(pool, key=_rank)
        return Selection(best.name, "no_budget", total(best))
    fitting = [c for c in pool if total(c) <= budget]
    if fitting:
        front = frontier(considerate(fitting), weighed)
        # Never above the accuracy per second of service the best converter of worker time
        # makes of it: at that price it is the choice, and past it the price would favour
        # variants that answer more requests less accurately and so fewer of them correctly.
        ceiling = max(0.0, *(_yield(c) for c in front))
        price = min(load_price(backlog_seconds, budget), ceiling)
        best = max(front, key=lambda c: (_accuracy(c) - price * c.weighed_seconds, -weighed(c)))
        # Saturated (worker time priced at what the store's best converter makes of it), and
        # only a worse converter fits in time: served now, it would take the workers from
        # requests that get the better one, and the queue would settle where only the poorest
        # subnet fits.
        worth = max(_yield(c) for c in pool)
        if 0 < worth <= load_price(backlog_seconds, budget) and _yield(best) < worth:
            raise Saturated(
                "the server is saturated: what fits this budget behind the queue now would take "
                "workers from requests it serves better"
            )
        # What an idle server would choose: the same table without the wait or the holding back.
        alone = unhurried(pool, constraints, elapsed_seconds=elapsed_seconds)
        downgraded = alone is not None and _accuracy(best) < _accuracy(alone)
        return Selection(best.name, "contention" if downgraded else "best_fit", total(best))
    if constraints.strict:
        # "Could an idle server meet it?" ignores the time this request already spent here:
        # under load that time is the load's doing, not the budget's.
        if any(c.idle_seconds <= budget for c in pool):
            raise BudgetUnmeetableNow("the budget cannot be met under the current load")
        raise BudgetUnmeetable("no variant can meet this budget on this machine, even when idle")
    # Nothing fits at the promise's quantile. In a store of subnets the fastest is the least
    # accurate, and often faster by less than the noise. A plan answering late would be late
    # twice over, or not as accurate as promised.
    variants = [c for c in pool if c.mean_seconds is None]
    if not variants:
        raise NoVariantAllowed(
            "only a cascade satisfies max_size and min_accuracy, and it does not fit the budget"
        )
    # Alone, the fastest: the most likely on time. A larger one taken for its expected accuracy
    # missed more often, and each miss raised the tier's level, so every bound after it.
    chosen = min(variants, key=total)
    if contended:
        # Others wait behind its worker time: weighed by its chance alone, the larger variants it
        # favoured let the queue grow, and fewer answers were on time.
        likely = [c for c in variants if (c.on_time or 0.0) >= LIKELY_ON_TIME]
        chosen = max(likely, key=_rank, default=chosen)
    return Selection(chosen.name, "fallback", total(chosen))
