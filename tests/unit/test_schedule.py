"""The scheduler's rule (service/core/schedule.py), played out on made-up workloads.

``simulate`` is a discrete-event model of the executor: jobs arrive, free workers take what
``pick`` gives them, runs last exactly as predicted. The properties are checked on its trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.latency import quantile
from service.core.schedule import (
    NO_BUDGET_HORIZON_SECONDS,
    ArrivalMix,
    Job,
    Tier,
    admissible,
    backlog,
    blocks,
    dispatch_key,
    ladder,
    missed,
    next_release,
    pick,
    tier_name,
    wait_at_place,
)

BUDGETS = (None, 0.010, 0.020, 0.050)
# A mix as the data plane learns it: 10/20/50 ms/none in equal shares.
TIERS = [Tier(0.010, 0.25, 0.003, 4), Tier(0.020, 0.25, 0.012, 4), Tier(0.050, 0.25, 0.040, 4)]


@dataclass(frozen=True)
class Arrival:
    at: float
    budget: float | None
    job: Job


@dataclass(frozen=True)
class Run:
    arrival: Arrival
    start: float

    @property
    def end(self) -> float:
        return self.start + self.arrival.job.run_seconds


def arrival(at: float, budget: float | None, run: float, workers: int, tiers: list[Tier]) -> Arrival:
    job = Job(dispatch_key(at, budget), run, ladder(workers, tiers, budget), budget is not None)
    return Arrival(at, budget, job)


def simulate(arrivals: list[Arrival], workers: int) -> list[Run]:
    """Every job's start, with the executor's rule and exact predictions."""
    future = sorted(arrivals, key=lambda a: a.at)
    pending: list[Arrival] = []
    free_at = [0.0] * workers
    runs: list[Run] = []
    t = 0.0
    while future or pending:
        while future and future[0].at <= t:
            pending.append(future.pop(0))
        progress = True
        while progress:
            progress = False
            for w in range(workers):
                if free_at[w] > t or not pending:
                    continue
                others = [max(0.0, f - t) for i, f in enumerate(free_at) if i != w]
                i = pick([a.job for a in pending], others, t)
                if i is not None:
                    a = pending.pop(i)
                    runs.append(Run(a, t))
                    free_at[w] = t + a.job.run_seconds
                    progress = True
        release = next_release([a.job for a in pending], t)
        moments = [f for f in free_at if f > t] + ([release] if release is not None else [])
        moments += [future[0].at] if future else []
        if not moments:
            assert not pending, "jobs left that nothing will ever start"
            break
        t = min(moments)
    return runs


workloads = st.lists(
    st.tuples(st.floats(0.0, 0.2), st.sampled_from(BUDGETS), st.floats(0.001, 0.06)),
    min_size=1,
    max_size=25,
)


def trace(raw: list[tuple[float, float | None, float]], workers: int, tiers: list[Tier]) -> list[Run]:
    return simulate([arrival(at, b, run, workers, tiers) for at, b, run in raw], workers)


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.001, 0.1)), min_size=1, max_size=20))
def test_edf_order_without_tight_tiers(jobs: list[tuple[float, float]]) -> None:
    queue = [Job(key, run) for key, run in jobs]
    i = pick(queue, [0.5], now=0.0)
    assert i is not None
    assert queue[i].key == min(j.key for j in queue)
    # Ties keep arrival order.
    assert i == next(k for k, j in enumerate(queue) if j.key == queue[i].key)


@given(workloads, st.integers(1, 3), st.booleans())
@settings(deadline=None)
def test_every_job_starts_and_no_budget_is_not_starved(raw, workers, tight) -> None:
    runs = trace(raw, workers, TIERS if tight else [])
    assert len(runs) == len(raw)
    for r in runs:
        if r.arrival.budget is None:
            # Only jobs that arrived before its aged key can go ahead of it.
            horizon = r.arrival.at + NO_BUDGET_HORIZON_SECONDS
            assert all(o.start >= r.start for o in runs if o.arrival.at > horizon)


@given(workloads, st.integers(1, 3), st.booleans())
@settings(deadline=None)
def test_nobody_is_made_late_by_a_job_that_did_not_need_to_run_first(raw, workers, tight) -> None:
    runs = trace(raw, workers, TIERS if tight else [])
    for j in runs:
        last_start = j.arrival.job.key - j.arrival.job.run_seconds
        for k in runs:
            overtook = j.arrival.at <= k.start < j.start and k.arrival.job.key > j.arrival.job.key
            # A job past hope when k started goes last by design: k cannot make it late.
            if overtook and not missed(j.arrival.job, k.start):
                # It passed j only because it is done before j has to start.
                assert k.end <= last_start + 1e-9


def test_jobs_past_hope_go_last_so_overload_is_not_a_domino() -> None:
    # One worker, 10 ms jobs with a 20 ms budget arriving every 5 ms: twice what it can serve.
    def on_time(runs: list[Run]) -> int:
        return sum(r.end <= r.arrival.job.key for r in runs)

    arrivals = [arrival(i * 0.005, 0.020, 0.010, 1, []) for i in range(200)]
    runs = simulate(arrivals, 1)
    assert len(runs) == 200  # every job still runs (late), once nothing that can be saved waits
    # In plain deadline order only the first few would be on time: each late job ahead makes
    # the next one late. Past-hope jobs going last, the worker serves a fresh one whenever
    # there is one: half of the arrivals (its capacity) are on time.
    assert on_time(runs) >= 95
    plain = [Arrival(a.at, a.budget, Job(a.job.key, a.job.run_seconds)) for a in arrivals]
    assert on_time(simulate(plain, 1)) <= 5


def test_missed_and_its_place_in_the_order() -> None:
    late = Job(key=0.010, run_seconds=0.020, budgeted=True)
    fresh = Job(key=0.050, run_seconds=0.020, budgeted=True)
    no_budget = Job(key=1.0, run_seconds=0.020)
    assert missed(late, now=0.0) and not missed(fresh, now=0.0)
    assert not missed(Job(key=0.010, run_seconds=0.020), now=0.0)  # no deadline to miss
    assert pick([late, fresh, no_budget], [0.0], now=0.0) == 1
    assert pick([late, no_budget], [0.0], now=0.0) == 1
    assert pick([late], [0.0], now=0.0) == 0
    # A new job waits behind what can still be on time, not behind what is past hope.
    new = Job(0.060, 0.004, budgeted=True)
    assert wait_at_place(new, [late, fresh], [0.0], now=0.0) == pytest.approx(0.020)
    # One past hope itself waits behind everything ordered before it.
    assert wait_at_place(Job(0.015, 0.020, budgeted=True), [late, fresh], [0.0], now=0.0) == pytest.approx(
        0.040
    )


def test_past_hope_goes_by_the_typical_run_not_the_bound() -> None:
    """Under load a job's bound is several typical runs: 15 ms from its deadline, a job whose
    bound is 20 ms but which typically runs 5 ms still keeps its place; at 4 ms it is past hope."""
    job = Job(key=0.015, run_seconds=0.020, budgeted=True, typical_seconds=0.005)
    assert not missed(job, now=0.0) and missed(job, now=0.011)
    other = Job(key=0.030, run_seconds=0.005, budgeted=True)
    assert pick([other, job], [0.0], now=0.0) == 1  # the earlier deadline first
    assert pick([other, job], [0.0], now=0.011) == 0


@given(workloads)
@settings(deadline=None)
def test_a_worker_is_kept_for_the_tight_tier(raw) -> None:
    # Two workers, the 10/20/50 ms/none mix: a job from a looser tier may start while the other
    # worker is busy only if a worker is then free within the 10 ms tier's slack, or if it could
    # not wait any longer.
    slack = TIERS[0].slack_seconds
    runs = trace(raw, 2, TIERS)
    for n, r in enumerate(runs):
        job = r.arrival.job
        if r.arrival.budget == 0.010 or r.start + job.run_seconds >= job.key:
            continue
        other = [o for o in runs[:n] if o.end > r.start]  # started before it, still running
        if other:
            assert min(other[0].end - r.start, job.run_seconds) <= slack + 1e-9


def test_ladder_keeps_workers_for_tighter_tiers_only() -> None:
    assert ladder(2, TIERS, 0.010) == ()
    assert ladder(2, TIERS, 0.020) == (0.003,)
    assert ladder(2, TIERS, None) == (0.003, 0.012)
    assert ladder(4, TIERS, None) == (0.003, 0.012, 0.040)
    # A tier that is most of the traffic keeps more workers.
    assert ladder(4, [Tier(0.010, 0.75, 0.003, 4)], None) == (0.003, 0.003, 0.003)
    # ...but never more than its requests have occupied at once: one client asking in turn
    # (concurrency 1) keeps one worker, however much of the traffic it is.
    assert ladder(4, [Tier(0.010, 0.75, 0.003, 2)], None) == (0.003, 0.003)
    assert ladder(2, [Tier(0.010, 1.0, 0.003, 1)], 0.020) == (0.003,)


def test_admissible() -> None:
    job = Job(key=1.0, run_seconds=0.030, limits=(0.003,))
    assert admissible(job, [0.0], now=0.0)  # the rest of the pool is idle
    assert not admissible(job, [0.010], now=0.0)  # nobody free within 3 ms for a tight arrival
    assert admissible(job, [0.002], now=0.0)
    assert admissible(job, [0.010], now=0.975)  # it cannot wait any longer
    assert admissible(Job(key=1.0, run_seconds=0.030), [0.010], now=0.0)
    # Blocking: the job could not start even on an otherwise idle pool, because its ladder keeps
    # every worker. One worker kept of two leaves the other to any job, however long.
    assert not blocks(job, workers=2)
    assert blocks(job, workers=1) and not blocks(Job(1.0, 0.002, (0.003,)), workers=1)
    assert blocks(Job(1.0, 0.030, (0.003, 0.012)), workers=2)
    assert not blocks(Job(1.0, 0.010, (0.003, 0.012)), workers=2)


def test_wait_at_place_is_the_wait_in_deadline_order() -> None:
    queue = [Job(0.050, 0.010), Job(0.020, 0.010), Job(1.0, 0.010)]
    # One worker, busy 5 ms: each new job waits for the jobs keyed before it, not the queue.
    assert wait_at_place(Job(0.010, 0.004), queue, [0.005], now=0.0) == pytest.approx(0.005)
    assert wait_at_place(Job(0.030, 0.004), queue, [0.005], now=0.0) == pytest.approx(0.015)
    assert wait_at_place(Job(2.0, 0.004), queue, [0.005], now=0.0) == pytest.approx(0.035)
    # Two idle workers: no wait.
    assert wait_at_place(Job(2.0, 0.004), queue, [0.0, 0.0], now=0.0) == pytest.approx(0.010)


def test_arrival_mix_learns_tiers_and_forgets_them() -> None:
    mix = ArrivalMix(window=100, fresh_seconds=5.0)
    for i in range(8):
        mix.add(0.1 * i, 0.010, 0.004, 1 + i % 2)
        mix.add(0.1 * i, None, math.inf, 1)
    mix.add(0.5, 0.020, 0.014, 1)  # one stray request is not a tier
    (tier,) = mix.tiers(1.0)
    assert tier.budget_seconds == 0.010
    assert tier.share == pytest.approx(8 / 17)
    assert tier.slack_seconds == pytest.approx(0.004)
    assert tier.concurrency == 2
    assert mix.tiers(10.0) == []
    # A tier nobody can serve in time, even at once, keeps nothing.
    for i in range(8):
        mix.add(20.0 + 0.1 * i, 0.005, -0.001, 1)
    assert mix.tiers(21.0) == []


def test_tier_names() -> None:
    assert [tier_name(b) for b in (None, 0.005, 0.010, 0.015, 0.050, 0.2, 30.0)] == [
        "none",
        "10ms",
        "10ms",
        "20ms",
        "50ms",
        "1s",
        "60s",
    ]


def _tiers_by_sorting(arrivals: list[tuple[float, float | None, float, int]], now: float) -> list[Tier]:
    """The arrival mix's tiers computed the plain way: group the fresh arrivals and sort."""
    fresh = [(b, s, c) for t, b, s, c in arrivals if now - t <= 5.0]
    groups: dict[str, list[tuple[float, float, int]]] = {}
    for budget, slack, concurrent in fresh:
        if budget is not None:
            groups.setdefault(tier_name(budget), []).append((budget, slack, concurrent))
    tiers = []
    for members in groups.values():
        budget = min(b for b, _, _ in members)
        slack = quantile([s for _, s, _ in members], 0.05)
        if len(members) >= 3 and slack > 0:
            tiers.append(Tier(budget, len(members) / len(fresh), slack, max(c for _, _, c in members)))
    return sorted(tiers, key=lambda t: (t.slack_seconds, t.budget_seconds))


@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 2.0),
            st.sampled_from([None, 0.008, 0.010, 0.015, 0.020, 0.05]),
            st.sampled_from([-0.002, 0.001, 0.004, 0.006, 0.012]),
            st.integers(1, 4),
        ),
        max_size=80,
    ),
    st.integers(1, 30),
)
def test_arrival_mix_tiers_are_those_of_its_fresh_window(
    steps: list[tuple[float, float | None, float, int]], window: int
) -> None:
    mix = ArrivalMix(window=window, fresh_seconds=5.0)
    arrivals: list[tuple[float, float | None, float, int]] = []
    now = 0.0
    for advance, budget, slack, concurrent in steps:
        now += advance
        mix.add(now, budget, slack, concurrent)
        arrivals.append((now, budget, slack, concurrent))
        assert mix.tiers(now) == _tiers_by_sorting(arrivals[-window:], now)


def test_the_backlog_is_the_on_time_work_ordered_before_the_new_job() -> None:
    now = 0.0
    queue = [
        Job(0.010, 0.004, budgeted=True),  # a tighter deadline: ahead
        Job(0.020, 0.006, budgeted=True),  # the same deadline: ahead
        Job(0.050, 0.008, budgeted=True),  # a looser one: behind
        Job(dispatch_key(now, None), 0.030),  # no budget: behind
        Job(0.002, 0.004, budgeted=True),  # past hope: behind every on-time job
    ]
    assert backlog(queue, 2, now, 0.020) == pytest.approx(0.005)
