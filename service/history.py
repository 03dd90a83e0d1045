"""What happened lately: the selection and budget counters, sampled every few seconds.

The Prometheus counters only ever grow; the status page wants "in the last minutes". A
:class:`History` keeps samples of the counters over :data:`HISTORY_SECONDS`, and :func:`recent`
turns the newest and the oldest into increases. Sampling beside the data plane, rather than
hooking into it, keeps a request's path free of this bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter

from service.observability import Metrics

HISTORY_SECONDS = 300.0
SAMPLE_PERIOD_SECONDS = 5.0


def _totals(counter: Counter, labels: tuple[str, str]) -> dict[tuple[str, str], float]:
    return {
        (s.labels[labels[0]], s.labels[labels[1]]): s.value
        for family in counter.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


@dataclass(frozen=True)
class Counts:
    """The counters the page reads, at one instant (``time.monotonic()``)."""

    at: float
    selected: dict[tuple[str, str], float]  # (variant, reason)
    budget: dict[tuple[str, str], float]  # (variant, result)

    @classmethod
    def read(cls, metrics: Metrics) -> Counts:
        return cls(
            time.monotonic(),
            _totals(metrics.selected, ("variant", "reason")),
            _totals(metrics.budget, ("variant", "result")),
        )


@dataclass(frozen=True)
class Recent:
    """Counter increases over the last ``seconds``."""

    seconds: float
    by_variant: dict[str, float]
    by_reason: dict[str, float]
    met: float
    missed: float

    @property
    def requests(self) -> float:
        return sum(self.by_variant.values())


def _increase(
    now: dict[tuple[str, str], float], then: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {key: value - then.get(key, 0.0) for key, value in now.items() if value > then.get(key, 0.0)}


def _sum_by(values: dict[tuple[str, str], float], position: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    for key, value in values.items():
        sums[key[position]] = sums.get(key[position], 0.0) + value
    return sums


def recent(now: Counts, then: Counts) -> Recent:
    selected = _increase(now.selected, then.selected)
    budget = _sum_by(_increase(now.budget, then.budget), 1)
    return Recent(
        seconds=now.at - then.at,
        by_variant=_sum_by(selected, 0),
        by_reason=_sum_by(selected, 1),
        met=budget.get("met", 0.0),
        missed=budget.get("missed", 0.0),
    )


class History:
    """Counter samples of the last :data:`HISTORY_SECONDS`, taken beside the data plane."""

    def __init__(self) -> None:
        self._samples: deque[Counts] = deque()

    def add(self, counts: Counts) -> None:
        self._samples.append(counts)
        # Keep one sample at or before the window's start, so the window is always covered.
        while len(self._samples) > 1 and self._samples[1].at <= counts.at - HISTORY_SECONDS:
            self._samples.popleft()

    def baseline(self, now: Counts) -> Counts:
        """The oldest sample within the window; ``now`` itself before the first sample."""
        return self._samples[0] if self._samples else now

    def lately(self, metrics: Metrics) -> Recent:
        """The counters' increases from the window's start to now."""
        now = Counts.read(metrics)
        return recent(now, self.baseline(now))

    async def keep(self, metrics: Metrics) -> None:
        """Forever: sample the counters every :data:`SAMPLE_PERIOD_SECONDS`."""
        while True:
            self.add(Counts.read(metrics))
            await asyncio.sleep(SAMPLE_PERIOD_SECONDS)
