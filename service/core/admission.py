"""Admission control: how long a new request would wait, and whether to take it at all."""

from __future__ import annotations

import math


def predicted_wait(queued: int, running: int, workers: int, service_seconds: float) -> float:
    """Seconds a job submitted now waits before a worker starts it.

    Every job ahead of it (queued, or running beyond the free workers) costs one service time,
    shared among the workers.
    """
    ahead = queued + running - workers + 1
    return max(0, ahead) * service_seconds / workers


def retry_after(wait_seconds: float) -> int:
    """A ``Retry-After`` value in whole seconds (at least 1)."""
    return max(1, math.ceil(wait_seconds))
