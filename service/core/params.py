"""Parsing of the ``/classify`` query parameters into SI units (seconds, bytes, fractions).

Each parser raises ``ValueError`` with a message a client developer can act on.
"""

from __future__ import annotations

import math
import re

MAX_BUDGET_SECONDS = 60.0
MAX_TOP_K = 20

_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"
_BUDGET = re.compile(rf"^{_NUMBER}\s*(?P<unit>ms|s|us|µs)?$")
_SIZE = re.compile(rf"^{_NUMBER}\s*(?P<unit>b|kb|mb|gb|kib|mib|gib)?$")
_TIME_UNITS = {None: 1e-3, "ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6}
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_budget(text: str) -> float:
    """``20ms``, ``0.02s``, ``20000us`` or a bare number of milliseconds -> seconds."""
    match = _BUDGET.match(text.strip().lower())
    if not match:
        raise ValueError("budget must be a duration like 20ms, 0.02s or 20000us (bare numbers are ms)")
    seconds = float(match["number"]) * _TIME_UNITS[match["unit"]]
    if not 0 < seconds <= MAX_BUDGET_SECONDS:
        raise ValueError(f"budget must be greater than 0 and at most {MAX_BUDGET_SECONDS:g} s")
    return seconds


def parse_size(text: str) -> int:
    """``6MB``, ``800KB``, ``5MiB`` or a bare number of bytes -> bytes."""
    match = _SIZE.match(text.strip().lower())
    if not match:
        raise ValueError("max_size must be a size like 6MB, 800KB or 5MiB (bare numbers are bytes)")
    size = float(match["number"]) * _SIZE_UNITS[match["unit"]]
    if size <= 0 or not math.isfinite(size):
        raise ValueError("max_size must be positive")
    return int(size)


def parse_accuracy(text: str) -> float:
    """``0.75`` or ``75%`` -> 0.75."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError("min_accuracy must be a fraction like 0.75 or a percentage like 75%") from None
    if not 0.0 <= value <= 1.0 or not math.isfinite(value):
        raise ValueError("min_accuracy must be between 0 and 1 (or 0% and 100%)")
    return value


def parse_top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"top_k must be a whole number from 1 to {MAX_TOP_K}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise ValueError(f"top_k must be a whole number from 1 to {MAX_TOP_K}")
    return value


def parse_bool(text: str, name: str = "strict") -> bool:
    """``true``/``1``/``yes`` or ``false``/``0``/``no``; ``name`` is the parameter's, for the message."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false")
