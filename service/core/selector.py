"""The selection policy: the most accurate variant predicted to fit the request's budget.

Pure: the caller supplies each candidate's predicted cost; nothing here measures anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Reason = Literal["best_fit", "pinned", "fallback", "no_budget"]


@dataclass(frozen=True)
class Candidate:
    """A variant as the selector sees it for one request.

    ``predicted_seconds``: decode + inference for this request's image under current conditions.
    ``idle_seconds``: the same on an idle machine (the profiled table, no contention).
    """

    name: str
    top1: float | None
    size_bytes: int
    predicted_seconds: float
    idle_seconds: float


@dataclass(frozen=True)
class Constraints:
    budget_seconds: float | None = None
    max_size_bytes: int | None = None
    min_accuracy: float | None = None
    pinned: str | None = None
    strict: bool = False


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


def _accuracy(candidate: Candidate) -> float:
    # Unknown accuracy ranks below every known one: never chosen over a measured variant.
    return -1.0 if candidate.top1 is None else candidate.top1


def allowed(candidates: Sequence[Candidate], constraints: Constraints) -> list[Candidate]:
    return [
        c
        for c in candidates
        if (constraints.max_size_bytes is None or c.size_bytes <= constraints.max_size_bytes)
        and (constraints.min_accuracy is None or (c.top1 is not None and c.top1 >= constraints.min_accuracy))
    ]


def select(
    candidates: Sequence[Candidate],
    constraints: Constraints,
    *,
    elapsed_seconds: float,
    queue_wait_seconds: float,
) -> Selection:
    """Choose a variant. Raises ``NoVariantAllowed``, ``BudgetUnmeetable``, ``BudgetUnmeetableNow``.

    Among the allowed variants predicted to finish within the budget, the most accurate wins,
    ties going to the faster. Without a budget the most accurate wins. When nothing fits, the
    fastest allowed variant answers late, unless ``strict``.
    """
    pool = allowed(candidates, constraints)
    if constraints.pinned is not None:
        pool = [c for c in pool if c.name == constraints.pinned]
        if not pool:
            raise NoVariantAllowed(f"variant {constraints.pinned} violates max_size or min_accuracy")
    if not pool:
        raise NoVariantAllowed("no variant satisfies max_size and min_accuracy")

    def total(c: Candidate) -> float:
        return elapsed_seconds + queue_wait_seconds + c.predicted_seconds

    budget = constraints.budget_seconds
    if constraints.pinned is not None:
        return Selection(pool[0].name, "pinned", total(pool[0]))
    if budget is None:
        best = max(pool, key=lambda c: (_accuracy(c), -c.predicted_seconds))
        return Selection(best.name, "no_budget", total(best))
    fitting = [c for c in pool if total(c) <= budget]
    if fitting:
        best = max(fitting, key=lambda c: (_accuracy(c), -c.predicted_seconds))
        return Selection(best.name, "best_fit", total(best))
    if constraints.strict:
        # "Could an idle server meet it?" ignores the time this request already spent here:
        # under load that time is the load's doing, not the budget's.
        if any(c.idle_seconds <= budget for c in pool):
            raise BudgetUnmeetableNow("the budget cannot be met under the current load")
        raise BudgetUnmeetable("no variant can meet this budget on this machine, even when idle")
    fastest = min(pool, key=total)
    return Selection(fastest.name, "fallback", total(fastest))
