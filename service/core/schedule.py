"""Which queued inference a free worker runs next: earliest deadline first, with capacity kept
for tighter deadlines.

Pure: times are seconds on the caller's clock; nothing here reads a clock or runs anything.

- **Order.** A job's key is its deadline (request start + budget). A request without a budget is
  keyed ``NO_BUDGET_HORIZON`` after its arrival: it comes after every budgeted request that arrived
  with it, and ages, so only the finitely many jobs keyed before it can ever overtake it.
- **A job past hope goes last.** A budgeted job that would end after its deadline even if it
  started now and ran at its typical pace (``missed``) waits behind every job that can still be
  on time. Plain deadline order breaks down under overload: once the queue holds more than a
  budget, every job is late because the late ones ahead of it ran first (EDF's domino effect).
  Jobs past hope wait, in deadline order, for a moment when nothing that can still be saved is
  queued (the executor sheds those that wait past the admission bound).
- **Capacity kept for tight deadlines.** An inference cannot be pre-empted, so a long job started
  now decides whether a tight request arriving a moment later finds a worker. Each budget tier
  present in the recent arrivals (``ArrivalMix``) keeps workers in proportion to its share, but
  never more than its requests have lately occupied at once (one client asking in turn needs
  one worker, however much of the traffic it is). Each kept worker must be free within that
  tier's *slack*: how long its requests can wait and still get the variant a free worker would
  give them (slack up to their *fastest* variant's edge kept the budget on paper, but a request
  arriving then had only fallbacks left). A job keeps that promise for every tier tighter
  than its own (``ladder``); one that would break it is held back (``admissible``), and tighter
  jobs behind it go first. A job is held only while it can afford the wait, and never while the
  whole pool is idle, so holding never starves anything.
- **Predicted wait** for a new job is the time it starts when the queue is played forward in
  this order (``wait_at_place``), not a mean over everything queued.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from service.core.latency import ranked

# No-budget requests are keyed this long after arrival: later than any budgeted request of the
# same moment, early enough that a steady stream of budgeted work cannot hold them back forever.
NO_BUDGET_HORIZON_SECONDS = 1.0
# Budget tiers, by upper edge: the unit of the arrival mix and the metrics' `tier` label.
TIER_EDGES_SECONDS = (0.010, 0.020, 0.050, 0.100, 1.0, 60.0)
NO_BUDGET_TIER = "none"
# A tier keeps capacity only when it is really present, not for one stray request.
MIN_TIER_ARRIVALS = 3


def tier_name(budget_seconds: float | None) -> str:
    """The tier a budget belongs to: the smallest edge at or above it (``10ms``, ``1s``...)."""
    if budget_seconds is None:
        return NO_BUDGET_TIER
    edge = next((e for e in TIER_EDGES_SECONDS if budget_seconds <= e), TIER_EDGES_SECONDS[-1])
    return f"{edge * 1000:g}ms" if edge < 1 else f"{edge:g}s"


TIER_NAMES = (*(tier_name(e) for e in TIER_EDGES_SECONDS), NO_BUDGET_TIER)


def dispatch_key(arrival: float, budget_seconds: float | None) -> float:
    """The job's place in the queue: its deadline, or its aged arrival when it has no budget."""
    return arrival + (NO_BUDGET_HORIZON_SECONDS if budget_seconds is None else budget_seconds)


@dataclass(frozen=True)
class Job:
    """A job as the scheduler sees it.

    ``limits``: the ladder it must keep (``ladder``): after it starts, the i-th soonest-free
    worker must be free within ``limits[i]`` seconds. ``budgeted``: its key is a budget's
    deadline, so it can be ``missed``.
    """

    key: float
    run_seconds: float
    limits: tuple[float, ...] = ()
    budgeted: bool = False
    typical_seconds: float | None = None  # its run at its typical pace (None: ``run_seconds``)


def missed(job: Job, now: float) -> bool:
    """A budgeted job that would end after its deadline even if it started now and ran at its
    typical pace. Not at its bound's pace: under load that bound is several typical runs, and a
    job ``run_seconds`` from its deadline still ends on time most often; sent last, behind every
    other, it waited for the queue to empty and was late for sure."""
    run = job.run_seconds if job.typical_seconds is None else job.typical_seconds
    return job.budgeted and now + run > job.key


@dataclass(frozen=True)
class Tier:
    budget_seconds: float  # the tightest budget seen in the tier
    share: float  # of all recent arrivals, budgeted or not
    slack_seconds: float  # how long its requests can wait and still get what a free worker gives
    concurrency: int  # the most of its requests in the server at once, lately


class _TierArrivals:
    """One tier's fresh arrivals: their budgets, slacks and concurrencies, each kept sorted."""

    def __init__(self) -> None:
        self.budgets: list[float] = []
        self.slacks: list[float] = []
        self.concurrency: list[int] = []

    def add(self, budget: float, slack: float, concurrent: int) -> None:
        insort(self.budgets, budget)
        insort(self.slacks, slack)
        insort(self.concurrency, concurrent)

    def remove(self, budget: float, slack: float, concurrent: int) -> None:
        del self.budgets[bisect_left(self.budgets, budget)]
        del self.slacks[bisect_left(self.slacks, slack)]
        del self.concurrency[bisect_left(self.concurrency, concurrent)]


class ArrivalMix:
    """Recent arrivals: each request's budget, its slack (how long it could wait and still get
    the variant a worker free at once would give it; negative when even that would be late), and
    how many requests of its tier were in the server when it arrived (itself included).

    Samples older than ``fresh_seconds`` do not count, so capacity kept for a tier that stopped
    arriving is given back within seconds. Each tier's arrivals are kept sorted as they come and
    go, so ``tiers`` (asked by every request) sorts nothing. Times must not go backwards. Not
    thread-safe: use from one thread.
    """

    def __init__(self, *, window: int, fresh_seconds: float) -> None:
        self._arrivals: deque[tuple[float, str, float | None, float, int]] = deque()  # oldest first
        self._tiers: dict[str, _TierArrivals] = {}
        self.window = window
        self.fresh_seconds = fresh_seconds

    def add(self, now: float, budget_seconds: float | None, slack_seconds: float, concurrent: int) -> None:
        if len(self._arrivals) == self.window:
            self._drop_oldest()
        name = tier_name(budget_seconds)
        self._arrivals.append((now, name, budget_seconds, slack_seconds, concurrent))
        if budget_seconds is not None:
            self._tiers.setdefault(name, _TierArrivals()).add(budget_seconds, slack_seconds, concurrent)

    def _drop_oldest(self) -> None:
        _, name, budget, slack, concurrent = self._arrivals.popleft()
        if budget is not None:
            self._tiers[name].remove(budget, slack, concurrent)

    def tiers(self, now: float) -> list[Tier]:
        """Budget tiers present lately, tightest slack first (then tightest budget)."""
        while self._arrivals and now - self._arrivals[0][0] > self.fresh_seconds:
            self._drop_oldest()
        total = len(self._arrivals)
        tiers = []
        for members in self._tiers.values():
            count = len(members.budgets)
            if count < MIN_TIER_ARRIVALS:
                continue
            # The slack its requests have at the quantile the selector predicts with.
            slack = ranked(members.slacks, 0.05)
            if slack <= 0.0:
                # At this quantile its requests would be late even on a worker free at once:
                # keeping one would hold the other tiers back for requests it cannot save.
                continue
            # Its tightest budget: the tier holds back only looser requests' jobs.
            tiers.append(Tier(members.budgets[0], count / total, slack, members.concurrency[-1]))
        return sorted(tiers, key=lambda t: (t.slack_seconds, t.budget_seconds))


def ladder(workers: int, tiers: Sequence[Tier], budget_seconds: float | None) -> tuple[float, ...]:
    """What a job of a request with ``budget_seconds`` must keep free for tighter tiers.

    Each tier tighter than the request's own keeps ``round(workers x share)`` workers (at least
    one, at most its concurrency), tightest first, until the workers run out: entry ``i`` is how
    soon the i-th soonest-free worker must be free. A tier never holds back its own jobs or
    tighter ones.
    """
    limits: list[float] = []
    for tier in tiers:
        if budget_seconds is not None and tier.budget_seconds >= budget_seconds:
            continue
        limits.extend([tier.slack_seconds] * min(tier.concurrency, max(1, round(workers * tier.share))))
    return tuple(sorted(limits)[:workers])


def blocks(job: Job, workers: int) -> bool:
    """The job cannot run beside the capacity its ladder keeps, even with every other worker free:
    only when its ladder keeps every worker (the job's own included) and it outlasts the loosest
    of those limits."""
    return len(job.limits) >= workers and job.run_seconds > job.limits[workers - 1]


def admissible(job: Job, others_busy: Sequence[float], now: float) -> bool:
    """May ``job`` start now on a free worker? ``others_busy``: the other workers' remaining seconds.

    Held back only while it would leave a tighter tier without its workers, and only while it can
    afford to wait (it starts at the latest when waiting longer would make it late), and never
    while every other worker is idle.
    """
    if now + job.run_seconds >= job.key or all(b <= 0.0 for b in others_busy):
        return True
    after = sorted([*(max(0.0, b) for b in others_busy), job.run_seconds])
    return all(a <= limit for a, limit in zip(after, job.limits, strict=False))


def pick(queue: Sequence[Job], others_busy: Sequence[float], now: float) -> int | None:
    """Index of the job a free worker starts now, if any.

    The earliest-keyed admissible job, the ``missed`` ones after all others, with one guard
    (backfilling): a job may pass one ordered before it only if it ends before that one's last
    moment to start, so a job that has to wait is never made late by one that did not need to
    run first.
    """
    last_start = math.inf  # the earliest last moment of the jobs passed over so far
    for i in sorted(range(len(queue)), key=lambda i: (missed(queue[i], now), queue[i].key)):
        job = queue[i]
        if now + job.run_seconds <= last_start and admissible(job, others_busy, now):
            return i
        if not missed(job, now):  # a missed job's last moment has passed: nothing can make it late
            last_start = min(last_start, job.key - job.run_seconds)
    return None


def next_release(queue: Sequence[Job], now: float) -> float | None:
    """The next moment after ``now`` a waiting job reaches its last moment to start: from then
    on it is no longer held back, whatever the workers do."""
    return min((j.key - j.run_seconds for j in queue if j.key - j.run_seconds > now), default=None)


def wait_at_place(job: Job, queue: Sequence[Job], busy: Sequence[float], now: float) -> float:
    """Seconds until ``job`` would start if it joined ``queue`` now.

    ``busy``: every worker's remaining seconds on its current job (0 when free). Plays the queue
    forward: free workers take jobs in ``pick`` order; jobs arriving later are not foreseen. The
    jobs already past hope are left out of the play (they go last; that one of them might
    backfill first is not foreseen): under overload they are most of the queue, and playing them
    for every variant of every request made the event loop the bottleneck. A job past hope itself
    waits for everything ordered before it, shared among the workers.
    """
    if missed(job, now):
        ahead = [j.run_seconds for j in queue if not missed(j, now) or j.key <= job.key]
        return (sum(ahead) + sum(max(0.0, b) for b in busy)) / len(busy)
    pending = [*(j for j in queue if not missed(j, now)), job]  # among equal keys, earlier first
    new = len(pending) - 1
    free_at = [now + max(0.0, b) for b in busy]
    t = now
    while True:
        started = False
        for w in range(len(free_at)):
            if free_at[w] > t:
                continue
            others = [f - t for i, f in enumerate(free_at) if i != w]
            i = pick(pending, others, t)
            if i is None:
                break
            if i == new:
                return t - now
            free_at[w] = t + pending[i].run_seconds
            pending.pop(i)
            if i < new:
                new -= 1
            started = True
        if started:
            continue
        release = next_release(pending, t)
        t = min([f for f in free_at if f > t] + ([] if release is None else [release]))


def backlog(queue: Sequence[Job], workers: int, now: float, key: float) -> float:
    """Predicted seconds of queued work per worker that a new job keyed ``key`` may wait behind:
    the jobs ordered before it, neither what runs now (a few clients in a closed loop keep the
    workers busy without a queue that grows) nor the ``missed`` jobs, which wait behind it. Not
    the looser deadlines' jobs either: counted, a few queued no-budget inferences priced a tight
    tier's requests as if the server were saturated."""
    return sum(j.run_seconds for j in queue if j.key <= key and not missed(j, now)) / workers


def busy_seconds(started: Sequence[tuple[float, float]], workers: int, now: float) -> list[float]:
    """Each worker's predicted remaining seconds, from its job's (start, predicted run)."""
    remaining = [max(0.0, s + run - now) for s, run in started]
    return remaining + [0.0] * max(0, workers - len(remaining))
