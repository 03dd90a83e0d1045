"""The selection policy, against tables made up by hypothesis."""

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.selector import (
    BudgetUnmeetable,
    BudgetUnmeetableNow,
    Candidate,
    Constraints,
    NoVariantAllowed,
    Saturated,
    Selection,
    select,
    unhurried,
)

candidate = st.builds(
    Candidate,
    name=st.text(alphabet="abcdefgh", min_size=1, max_size=6),
    top1=st.one_of(st.none(), st.floats(0.3, 0.9)),
    size_bytes=st.integers(1, 50_000_000),
    predicted_seconds=st.floats(0.001, 0.5),
    idle_seconds=st.floats(0.001, 0.5),
    on_time=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
tables = st.lists(candidate, min_size=1, max_size=12, unique_by=lambda c: c.name)
seconds = st.floats(0.0, 0.2)


def waiting(table: list[Candidate], wait: float) -> list[Candidate]:
    """The same table with every variant waiting ``wait`` seconds in the queue."""
    return [replace(c, wait_seconds=wait) for c in table]


@given(tables, st.floats(0.001, 1.0), seconds, seconds)
def test_never_over_budget_when_something_fits(table, budget, elapsed, wait) -> None:
    choice = select(waiting(table, wait), Constraints(budget_seconds=budget), elapsed_seconds=elapsed)
    fits = [c for c in table if elapsed + wait + c.predicted_seconds <= budget]
    if fits:
        assert choice.reason in ("best_fit", "contention")
        assert choice.predicted_seconds <= budget
        best = max((-1 if c.top1 is None else c.top1) for c in fits)
        chosen = next(c for c in table if c.name == choice.name)
        assert (-1 if chosen.top1 is None else chosen.top1) == best
    else:
        # Nothing fits, on an idle server: the fastest.
        assert choice.reason == "fallback"
        assert choice.predicted_seconds == min(elapsed + wait + c.predicted_seconds for c in table)


@given(tables, st.floats(0.001, 1.0), seconds, seconds)
def test_unhurried_is_the_choice_of_a_free_worker(table, budget, elapsed, wait) -> None:
    # The capacity a tier keeps is sized by it (service/core/schedule.py): what the request gets
    # with no wait, whatever it waits now.
    constraints = Constraints(budget_seconds=budget)
    wanted = unhurried(waiting(table, wait), constraints, elapsed_seconds=elapsed)
    alone = select(table, constraints, elapsed_seconds=elapsed)
    if alone.reason == "fallback":
        assert wanted is None
    else:
        assert wanted is not None and wanted.name == alone.name
    assert unhurried(table, Constraints(), elapsed_seconds=elapsed) is None


@given(tables, st.floats(0.001, 1.0), st.floats(0.001, 1.0), seconds, seconds)
def test_monotone_in_budget(table, a, b, elapsed, wait) -> None:
    low, high = sorted((a, b))

    def accuracy(budget: float) -> float:
        choice = select(waiting(table, wait), Constraints(budget_seconds=budget), elapsed_seconds=elapsed)
        if choice.reason == "fallback":
            return -2.0  # below any fitting choice
        top1 = next(c for c in table if c.name == choice.name).top1
        return -1.0 if top1 is None else top1

    assert accuracy(high) >= accuracy(low)


def _table() -> list[Candidate]:
    return [
        Candidate("big", 0.78, 24_000_000, 0.030, 0.020),
        Candidate("mid", 0.75, 5_000_000, 0.008, 0.006),
        Candidate("tiny", 0.55, 4_000_000, 0.004, 0.003),
        Candidate("mystery", None, 1_000_000, 0.001, 0.001),
    ]


def test_no_budget_takes_the_most_accurate() -> None:
    choice = select(_table(), Constraints(), elapsed_seconds=0.0)
    assert (choice.name, choice.reason) == ("big", "no_budget")


def test_ties_go_to_the_faster() -> None:
    table = [Candidate("slow", 0.7, 1, 0.010, 0.010), Candidate("fast", 0.7, 1, 0.005, 0.005)]
    assert select(table, Constraints(budget_seconds=1), elapsed_seconds=0).name == "fast"


def test_queue_wait_pushes_to_smaller_variants() -> None:
    idle = select(_table(), Constraints(budget_seconds=0.035), elapsed_seconds=0.0)
    loaded = select(waiting(_table(), 0.025), Constraints(budget_seconds=0.035), elapsed_seconds=0.0)
    assert (idle.name, idle.reason, loaded.name, loaded.reason) == ("big", "best_fit", "mid", "contention")


def test_filters() -> None:
    t = _table()
    by_size = select(t, Constraints(max_size_bytes=4_500_000), elapsed_seconds=0)
    assert by_size.name == "tiny"
    by_accuracy = select(t, Constraints(budget_seconds=0.01, min_accuracy=0.76), elapsed_seconds=0)
    assert (by_accuracy.name, by_accuracy.reason) == ("big", "fallback")
    with pytest.raises(NoVariantAllowed):
        select(t, Constraints(max_size_bytes=10, min_accuracy=0.5), elapsed_seconds=0)
    with pytest.raises(NoVariantAllowed):
        select(t, Constraints(pinned="big", max_size_bytes=10), elapsed_seconds=0)


def test_pinned_ignores_the_budget() -> None:
    choice = select(_table(), Constraints(budget_seconds=0.001, pinned="big"), elapsed_seconds=0)
    assert (choice.name, choice.reason) == ("big", "pinned")


def test_strict_distinguishes_impossible_from_busy() -> None:
    strict = Constraints(budget_seconds=0.005, strict=True)
    with pytest.raises(BudgetUnmeetableNow):
        select(waiting(_table(), 0.02), strict, elapsed_seconds=0.0)
    with pytest.raises(BudgetUnmeetable):
        select(_table(), Constraints(budget_seconds=0.0005, strict=True), elapsed_seconds=0)


blocking_tables = st.lists(
    st.builds(
        Candidate,
        name=st.text(alphabet="abcdefgh", min_size=1, max_size=6),
        top1=st.floats(0.3, 0.9),
        size_bytes=st.just(1),
        predicted_seconds=st.floats(0.001, 0.05),
        idle_seconds=st.floats(0.001, 0.05),
        wait_seconds=st.floats(0.0, 0.05),
        blocks=st.booleans(),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda c: c.name,
)


@given(blocking_tables, st.one_of(st.none(), st.floats(0.005, 0.1)))
def test_yields_to_tighter_deadlines_within_its_own_budget(table, budget) -> None:
    choice = select(table, Constraints(budget_seconds=budget), elapsed_seconds=0.0)
    chosen = next(c for c in table if c.name == choice.name)
    if budget is None:  # no deadline: the most accurate, held back by the schedule instead
        assert chosen.top1 == max(c.top1 for c in table) and choice.reason == "no_budget"
        return
    fits = [c for c in table if c.wait_seconds + c.predicted_seconds <= budget]
    if any(not c.blocks for c in fits):
        assert not chosen.blocks
        assert chosen.top1 == max(c.top1 for c in fits if not c.blocks)
    # A downgrade caused by other traffic says so: the choice is less accurate than the one an
    # idle server (no wait, nothing to yield to) would make.
    alone = [c for c in table if budget is None or c.predicted_seconds <= budget]
    if choice.reason in ("best_fit", "no_budget"):
        assert chosen.top1 >= max(c.top1 for c in alone)
    if choice.reason == "contention":
        assert chosen.top1 < max(c.top1 for c in alone)


def test_unknown_accuracy_only_when_pinned_or_nothing_known_fits() -> None:
    # "mystery" (random weights, top1 null) is the fastest and smallest of the table.
    assert select(_table(), Constraints(budget_seconds=0.005), elapsed_seconds=0).name == "tiny"
    assert select(_table(), Constraints(max_size_bytes=4_500_000), elapsed_seconds=0).name == "tiny"
    alone = select(_table(), Constraints(budget_seconds=0.002), elapsed_seconds=0)
    assert (alone.name, alone.reason) == ("mystery", "best_fit")
    pinned = select(_table(), Constraints(budget_seconds=1, pinned="mystery"), elapsed_seconds=0)
    assert (pinned.name, pinned.reason) == ("mystery", "pinned")


@given(tables, st.floats(0.001, 1.0), seconds, seconds)
def test_no_dominated_choice(table, budget, elapsed, backlog) -> None:
    # No other fitting variant is at least as accurate and at least as fast, and better in one.
    try:
        choice = select(
            table, Constraints(budget_seconds=budget), elapsed_seconds=elapsed, backlog_seconds=backlog
        )
    except Saturated:
        return  # refused: no choice at all
    chosen = next(c for c in table if c.name == choice.name)
    rank = -1 if chosen.top1 is None else chosen.top1
    for c in table:
        if c is chosen or elapsed + c.predicted_seconds > budget:
            continue
        accuracy = -1 if c.top1 is None else c.top1
        as_good = accuracy >= rank and c.predicted_seconds <= chosen.predicted_seconds
        assert not (as_good and (accuracy > rank or c.predicted_seconds < chosen.predicted_seconds))


@given(tables, st.floats(0.001, 1.0), seconds, seconds)
def test_more_backlog_never_chooses_a_slower_variant(table, budget, a, b) -> None:
    low, high = sorted((a, b))
    constraints = Constraints(budget_seconds=budget)

    def choose(backlog: float) -> Selection | None:
        try:
            return select(table, constraints, elapsed_seconds=0.0, backlog_seconds=backlog)
        except Saturated:
            return None  # refused

    calm, busy = choose(low), choose(high)
    if calm is None:
        assert busy is None  # refused at a backlog, refused at any longer one
    elif busy is not None:
        assert busy.predicted_seconds <= calm.predicted_seconds
    assert select(table, constraints, elapsed_seconds=0.0, backlog_seconds=0.0) == select(
        table, constraints, elapsed_seconds=0.0
    )


def _overload(ladder: list[tuple[str, float, float]], rate: float, budget: float, priced: bool) -> dict:
    """Two workers, FIFO, arrivals every 1 / rate for 20 s, each run as predicted give or take
    15 %: the share of answers on time, of correct ones on time (in expectation), and the mean
    work queued at an arrival."""
    rng = random.Random(0)  # noqa: S311 (noise, not secrets)
    free_at = [0.0, 0.0]
    runs: list[tuple[float, float]] = []  # (start, end) of the jobs not finished
    on_time = correct = queued_sum = 0.0
    arrivals = int(20 * rate)
    for i in range(arrivals):
        now = i / rate
        runs = [r for r in runs if r[1] > now]
        queued = sum(end - start for start, end in runs if start > now)
        queued_sum += queued
        wait = max(0.0, min(free_at) - now)
        table = [Candidate(n, a, 1, s, s, wait_seconds=wait) for n, a, s in ladder]
        choice = select(
            table,
            Constraints(budget_seconds=budget),
            elapsed_seconds=0.0,
            backlog_seconds=queued / 2 if priced else 0.0,
        )
        _, accuracy, service = next(v for v in ladder if v[0] == choice.name)
        worker = free_at.index(min(free_at))
        start = max(now, free_at[worker])
        free_at[worker] = start + service * rng.lognormvariate(0.0, 0.15)
        runs.append((start, free_at[worker]))
        if free_at[worker] - now <= budget:
            on_time += 1
            correct += accuracy
    return {"on_time": on_time / arrivals, "correct": correct / arrivals, "queued": queued_sum / arrivals}


def test_under_overload_the_price_keeps_the_queue_short_and_answers_more_correctly() -> None:
    # A ladder whose fastest variants are poor, offered twice what its best variant serves:
    # choosing request by request, the queue grows until only poor variants fit, and noise then
    # makes answers at the budget's edge late.
    ladder = [
        ("tiny", 0.36, 0.0025),
        ("small", 0.55, 0.0035),
        ("mid", 0.70, 0.0050),
        ("good", 0.80, 0.0070),
        ("best", 0.87, 0.0090),
    ]
    budget = 0.020
    rate = 2 * 2 / 0.0090
    greedy = _overload(ladder, rate, budget, priced=False)
    priced = _overload(ladder, rate, budget, priced=True)
    assert greedy["on_time"] < 0.9
    assert priced["on_time"] >= 0.99
    assert priced["correct"] > greedy["correct"] + 0.05
    assert priced["queued"] < greedy["queued"]
    # The mix the price settles on is about the best one whose service rate keeps up: a mean
    # service of 2 workers / rate = 4.5 ms, between "small" and "mid" (0.55 x 1/3 + 0.70 x 2/3).
    assert priced["correct"] >= 0.62
    # Without overload nothing changes: a quarter of that rate is served by the best variant.
    calm = _overload(ladder, rate / 4, budget, priced=True)
    assert calm["correct"] == pytest.approx(0.87)


# Cascade plans: a worst case (``predicted_seconds``) at or above their mean.
plan = st.builds(
    lambda name, top1, size, mean, extra, idle, blocks: Candidate(
        name=">" + name,
        top1=top1,
        size_bytes=size,
        predicted_seconds=mean + extra,
        idle_seconds=idle,
        blocks=blocks,
        mean_seconds=mean,
    ),
    st.text(alphabet="abcdefgh", min_size=1, max_size=6),
    st.floats(0.3, 0.95),
    st.integers(1, 50_000_000),
    st.floats(0.001, 0.3),
    st.floats(0.0, 0.3),
    st.floats(0.001, 0.5),
    st.booleans(),
)
with_plans = st.tuples(tables, st.lists(plan, max_size=4, unique_by=lambda c: c.name)).map(
    lambda t: t[0] + t[1]
)


@given(with_plans, st.floats(0.001, 1.0), seconds, seconds, st.floats(0.0, 0.2))
def test_a_plan_whose_worst_case_does_not_fit_is_never_chosen(table, budget, elapsed, wait, backlog) -> None:
    try:
        choice = select(
            waiting(table, wait),
            Constraints(budget_seconds=budget),
            elapsed_seconds=elapsed,
            backlog_seconds=backlog,
        )
    except (NoVariantAllowed, Saturated):
        return
    chosen = next(c for c in table if c.name == choice.name)
    if chosen.mean_seconds is not None:
        assert elapsed + wait + chosen.predicted_seconds <= budget
        assert choice.reason in ("best_fit", "contention")
    if choice.reason == "fallback":
        assert chosen.mean_seconds is None


def test_a_plan_weighed_at_its_mean_wins_under_load_where_its_worst_case_would_not() -> None:
    """Under a backlog the plan's mean, not its worst case, is what the load price weighs."""
    big = Candidate("big", 0.77, 1, predicted_seconds=0.010, idle_seconds=0.01)
    small = Candidate("small", 0.70, 1, predicted_seconds=0.004, idle_seconds=0.004)
    cascade = Candidate(
        "small>big", 0.765, 1, predicted_seconds=0.014, idle_seconds=0.014, mean_seconds=0.0055
    )
    idle = select([big, small, cascade], Constraints(budget_seconds=0.05), elapsed_seconds=0.0)
    assert idle.name == "big"
    loaded = select(
        [big, small, cascade], Constraints(budget_seconds=0.05), elapsed_seconds=0.0, backlog_seconds=0.02
    )
    assert loaded.name == "small>big"
    # Above its worst case it is not chosen even when it is the most accurate.
    sure = replace(cascade, top1=0.8)
    assert select([big, small, sure], Constraints(budget_seconds=0.012), elapsed_seconds=0.0).name == "big"
    assert (
        select([big, small, sure], Constraints(budget_seconds=0.02), elapsed_seconds=0.0).name == "small>big"
    )


def test_idle_a_plan_as_accurate_as_its_big_stage_answers_for_less() -> None:
    """A tie in accuracy goes to what costs the workers less: a plan matching its big stage, once
    its worst case fits; the big stage where only it fits."""
    big = Candidate("big", 0.77, 1, predicted_seconds=0.010, idle_seconds=0.01)
    small = Candidate("small", 0.70, 1, predicted_seconds=0.004, idle_seconds=0.004)
    matching = Candidate(
        "small>big", 0.77, 1, predicted_seconds=0.014, idle_seconds=0.014, mean_seconds=0.007
    )
    table = [big, small, matching]
    assert select(table, Constraints(budget_seconds=0.02), elapsed_seconds=0.0).name == "small>big"
    assert select(table, Constraints(budget_seconds=0.012), elapsed_seconds=0.0).name == "big"


def test_a_plan_ranked_as_its_big_stage_answers_for_less_but_min_accuracy_reads_its_own_top1() -> None:
    big = Candidate("big", 0.77, 1, predicted_seconds=0.010, idle_seconds=0.01)
    small = Candidate("small", 0.70, 1, predicted_seconds=0.004, idle_seconds=0.004)
    matched = Candidate(
        "small>big", 0.768, 1, predicted_seconds=0.014, idle_seconds=0.014, mean_seconds=0.007
    )
    assert select([big, small, matched], Constraints(budget_seconds=0.02), elapsed_seconds=0.0).name == "big"
    ranked = replace(matched, ranked_top1=0.77)
    table = [big, small, ranked]
    choice = select(table, Constraints(budget_seconds=0.02), elapsed_seconds=0.0)
    assert (choice.name, choice.reason) == ("small>big", "best_fit")
    strict = Constraints(budget_seconds=0.02, min_accuracy=0.77)
    assert select(table, strict, elapsed_seconds=0.0).name == "big"


def test_saturated_a_request_that_only_a_poor_converter_fits_is_refused() -> None:
    # "good" turns worker time into the most correct answers (0.70 per 7.5 ms); only "tiny" (0.36
    # per 5 ms) fits in time behind this queue.
    def table(wait: float) -> list[Candidate]:
        return [
            Candidate("tiny", 0.36, 1, 0.005, 0.005, wait_seconds=wait),
            Candidate("good", 0.70, 1, 0.0075, 0.0075, wait_seconds=wait),
        ]

    budget = Constraints(budget_seconds=0.020)
    with pytest.raises(Saturated):
        select(table(0.013), budget, elapsed_seconds=0.0, backlog_seconds=0.020)
    calm = select(table(0.013), budget, elapsed_seconds=0.0, backlog_seconds=0.002)
    assert calm.name == "tiny"
    # Where the best converter fits, it is the choice, however long the queue.
    fits = select(table(0.005), budget, elapsed_seconds=0.0, backlog_seconds=0.020)
    assert fits.name == "good"
    with pytest.raises(Saturated):  # strict alike: refused, the load is why
        select(
            table(0.013),
            Constraints(budget_seconds=0.020, strict=True),
            elapsed_seconds=0.0,
            backlog_seconds=0.020,
        )


def test_nothing_fits_alone_the_fastest_answers() -> None:
    # No bound fits, and no other request waits: the fastest, as the contract says, however good
    # the larger ones' chances ("good" would give more correct answers on time on average, but
    # its misses are the tier's: they raise the level every later bound is priced at).
    def table(*chances: float | None) -> list[Candidate]:
        return [
            Candidate("tiny", 0.24, 1, 0.008, 0.008, on_time=chances[0]),
            Candidate("good", 0.54, 1, 0.010, 0.010, on_time=chances[1]),
            Candidate("big", 0.77, 1, 0.020, 0.020, on_time=chances[2]),
        ]

    budget = Constraints(budget_seconds=0.007)
    for chances in ((0.95, 0.9, 0.3), (0.95, 0.9, 0.7), (None, None, None), (0.0, 0.0, 0.0)):
        alone = select(table(*chances), budget, elapsed_seconds=0.0)
        assert (alone.name, alone.reason) == ("tiny", "fallback")


def test_nothing_fits_under_load_the_most_accurate_likely_on_time_answers() -> None:
    # Behind the queue nothing fits at the promise's quantile; others wait behind a fallback's
    # worker time, so it goes by the variants on time nine times in ten: "good", not "big" (whose
    # expected correct answers are more), nor "tiny", the fastest and least accurate.
    def table(wait: float, big_on_time: float) -> list[Candidate]:
        return [
            Candidate("tiny", 0.24, 1, 0.008, 0.008, wait_seconds=wait, on_time=0.99),
            Candidate("good", 0.54, 1, 0.010, 0.010, wait_seconds=wait, on_time=0.9),
            Candidate("big", 0.77, 1, 0.020, 0.020, wait_seconds=wait, on_time=big_on_time),
        ]

    budget = Constraints(budget_seconds=0.015)
    loaded = select(table(0.008, 0.8), budget, elapsed_seconds=0.0, contended=True)
    assert (loaded.name, loaded.reason) == ("good", "fallback")
    assert select(table(0.008, 0.8), budget, elapsed_seconds=0.0).name == "tiny"  # alone
    # Nothing likely on time: the fastest.
    hopeless = [replace(c, on_time=0.5) for c in table(0.008, 0.5)]
    assert select(hopeless, budget, elapsed_seconds=0.0, contended=True).name == "tiny"
    with pytest.raises(BudgetUnmeetableNow):  # strict: refused, the load is why
        select(
            table(0.008, 0.8),
            Constraints(budget_seconds=0.015, strict=True),
            elapsed_seconds=0.0,
            contended=True,
        )
