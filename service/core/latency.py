"""Latency estimates: the on-device table, kept current from live traffic.

All times are seconds. The table starts from start-up profiling on this machine; every served
inference is added to its variant's recent window. A variant with enough recent samples is
predicted from them; one not run lately is predicted from its profiled figure times the current
*slowdown* (how much slower than profiled the variants that did run lately were), so contention
shows up in every variant's prediction within seconds, chosen or not.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MIN_FRESH_SAMPLES = 8
SLOWDOWN_LIMITS = (0.5, 50.0)


def ranked(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of values already sorted (nearest rank, so an observed value)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, so it is always an observed value)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ranked(ordered, q)


@dataclass(frozen=True)
class Profile:
    """A variant's profiled inference latency on this machine, idle."""

    p50: float
    p95: float

    @classmethod
    def of(cls, timings: Iterable[float]) -> Profile:
        values = list(timings)
        return cls(p50=quantile(values, 0.5), p95=quantile(values, 0.95))


class Recent:
    """Recent timed samples of one quantity; samples older than ``fresh_seconds`` do not count.

    Every live estimate ages out this way, so a burst (of contention, of late answers) stops
    steering decisions seconds after it ends, even if no new sample arrives to push it out.
    The fresh values are kept sorted as samples come and go (every request predicts every
    variant: a quantile must be an index, not a sort). Times must not go backwards.
    """

    def __init__(self, *, window: int, fresh_seconds: float) -> None:
        self._samples: deque[tuple[float, float]] = deque()  # (time, value), oldest first
        self._sorted: list[float] = []
        self.window = window
        self.fresh_seconds = fresh_seconds
        self._last: float | None = None

    def add(self, value: float, now: float) -> None:
        if len(self._samples) == self.window:
            self._drop_oldest()
        self._samples.append((now, value))
        insort(self._sorted, value)
        self._last = now

    def _drop_oldest(self) -> None:
        _, value = self._samples.popleft()
        del self._sorted[bisect_left(self._sorted, value)]

    def fresh(self, now: float) -> Sequence[float]:
        """The fresh samples, sorted (a view: do not keep it past the next change)."""
        while self._samples and now - self._samples[0][0] > self.fresh_seconds:
            self._drop_oldest()
        return self._sorted

    def quantile(self, q: float, now: float, min_samples: int = 1) -> float | None:
        """The ``q`` quantile of the fresh samples; None when there are fewer than ``min_samples``."""
        fresh = self.fresh(now)
        if not fresh or len(fresh) < min_samples:
            return None
        return ranked(fresh, q)

    def last(self) -> float | None:
        """When the newest sample was taken."""
        return self._last


class LatencyModel:
    """Per-variant inference latency predictions. Not thread-safe: use from one thread."""

    def __init__(self, profiles: Mapping[str, Profile], *, window: int, fresh_seconds: float) -> None:
        self.profiles = dict(profiles)
        self._samples = {name: Recent(window=window, fresh_seconds=fresh_seconds) for name in profiles}
        # observed / profiled p50, of recent inferences of any variant.
        self._ratios = Recent(window=window, fresh_seconds=fresh_seconds)

    def observe(self, name: str, seconds: float, now: float) -> None:
        self._samples[name].add(seconds, now)
        self._ratios.add(seconds / self.profiles[name].p50, now)

    def last_run(self, name: str) -> float | None:
        return self._samples[name].last()

    def slowdown(self, now: float) -> float:
        """Median recent (observed / profiled) ratio; 1 when nothing ran lately."""
        median = self._ratios.quantile(0.5, now)
        if median is None:
            return 1.0
        low, high = SLOWDOWN_LIMITS
        return min(high, max(low, median))

    def predict(self, name: str, q: float, now: float, slowdown: float | None = None) -> float:
        """The ``q`` quantile of this variant's inference time, as things are now.

        ``slowdown`` may be passed in when predicting many variants at one instant.
        """
        live = self._samples[name].quantile(q, now, MIN_FRESH_SAMPLES)
        if live is not None:
            return live
        return self.idle(name, q) * (self.slowdown(now) if slowdown is None else slowdown)

    def idle(self, name: str, q: float) -> float:
        """The profiled figure: p50 for q <= 0.5, else p95."""
        profile = self.profiles[name]
        return profile.p50 if q <= 0.5 else profile.p95


# What a decode costs, as the features of a linear cost model: a fixed part, the bytes (entropy
# decoding reads all of them, whatever the JPEG scale), the pixels the decoder produces, and the
# pixels of the model input (resize, crop, copy).
DecodeWork = tuple[float, float, float, float]


def decode_seconds(cost: Sequence[float], work: DecodeWork) -> float:
    """The idle decode + preprocessing time of ``work`` under one format's profiled ``cost``."""
    return sum(c * w for c, w in zip(cost, work, strict=True))


class DecodeModel:
    """Predicts decode + preprocessing time from the image header and the target size, per format.

    Each format's idle cost is a linear model of the work (``DecodeWork``), fitted at start-up;
    live samples keep the recent ratio of observed to idle time, so contention scales every
    prediction while the model keeps small and large decodes apart. (Seconds per decoded pixel
    alone did not: the fixed part made small decodes look several times dearer per pixel, and
    predicting a large decode from them kept a server that served small variants serving small
    variants.)
    """

    def __init__(self, costs: Mapping[str, Sequence[float]], *, window: int, fresh_seconds: float) -> None:
        self.costs = {fmt: tuple(cost) for fmt, cost in costs.items()}
        self._ratios = {fmt: Recent(window=window, fresh_seconds=fresh_seconds) for fmt in costs}

    def idle(self, fmt: str, work: DecodeWork) -> float:
        return decode_seconds(self.costs[fmt], work)

    def observe(self, fmt: str, work: DecodeWork, seconds: float, now: float) -> None:
        self._ratios[fmt].add(seconds / self.idle(fmt, work), now)

    def slowdown(self, fmt: str, q: float, now: float) -> float:
        """The ``q`` quantile of recent observed / idle decode times; 1 with too few samples."""
        live = self._ratios[fmt].quantile(q, now, MIN_FRESH_SAMPLES)
        return 1.0 if live is None else live


class Ewma:
    """Exponentially weighted moving average (of job service time)."""

    def __init__(self, initial: float, alpha: float = 0.1) -> None:
        self.value = initial
        self.alpha = alpha

    def update(self, sample: float) -> None:
        self.value += self.alpha * (sample - self.value)
