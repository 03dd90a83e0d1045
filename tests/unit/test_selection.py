"""Which chosen jobs are dropped once past hope rather than answered late (``Choice``)."""

from __future__ import annotations

from service.core import schedule, selector
from service.pricing import Price
from service.selection import Choice


def choice(past_hope: bool, wait_seconds: float = 0.004) -> Choice:
    candidate = selector.Candidate(
        "v", 0.7, 1, predicted_seconds=0.012, idle_seconds=0.010, wait_seconds=wait_seconds
    )
    return Choice(
        selection=selector.Selection("v", "best_fit" if not past_hope else "fallback", 0.012),
        price=Price(candidate, 0.008, 0.012, 0.0, 0.002),
        job=schedule.Job(0.020, 0.012, budgeted=True, typical_seconds=0.008),
        fastest_point_seconds=0.008,
        past_hope=past_hope,
        idle=False,
    )


def test_only_a_job_queued_past_hope_or_started_at_once_waits_to_answer_late() -> None:
    # Queued in time to wait for a worker, and past hope since: dropped at once, strict or not.
    assert choice(past_hope=False).shed_when_missed(strict=False)
    assert choice(past_hope=False).shed_when_missed(strict=True)
    # Its budget out of reach from the start: answered late, unless strict.
    assert not choice(past_hope=True).shed_when_missed(strict=False)
    assert choice(past_hope=True).shed_when_missed(strict=True)
    # A worker could take it at once (a client asking in turn): only its own run can make it
    # late, and no request waiting is there to take the worker from: answered late, unless strict.
    assert not choice(past_hope=False, wait_seconds=0.0).shed_when_missed(strict=False)
    assert choice(past_hope=False, wait_seconds=0.0).shed_when_missed(strict=True)
