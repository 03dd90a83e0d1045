"""Where the server's time goes under load: py-spy attached to a running edgefit (BENCH_PROFILE=1).

A missed target is to be explained by a profile, not lowered: this samples the server while the
closed-loop client runs and summarises the raw stacks per thread.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RATE_HZ = 200


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def start(pid: int, seconds: float, raw: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``seconds`` into ``raw`` (collapsed stacks, one line per stack)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (it comes with the loadtest extra)")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(RATE_HZ), "--format", "raw", "--threads", "--nonblocking",
         "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _group(thread: str) -> str:
    # "thread (0x7f..): edgefit-infer_0" -> "edgefit-infer", one row for all workers.
    name = thread.split(": ", 1)[-1]
    return re.sub(r"[_-]?\d+$", "", name)


def _frame(frame: str) -> str:
    # "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)" -> without line.
    return re.sub(r":\d+\)$", ")", frame)


def summarize(raw: Path, seconds: float, top: int = 8) -> dict[str, Any]:
    """Per thread group: how busy its threads were, and the functions they were in (self)."""
    threads: Counter[str] = Counter()
    own: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        threads[frames[0]] += int(count)
        own[_group(frames[0])][_frame(frames[-1])] += int(count)
    possible = RATE_HZ * seconds
    groups: dict[str, Any] = {}
    for thread, samples in threads.items():
        g = groups.setdefault(_group(thread), {"threads": 0, "samples": 0})
        g["threads"] += 1
        g["samples"] += samples
    for name, g in groups.items():
        g["busy_per_thread"] = g["samples"] / g["threads"] / possible
        g["self"] = [{"function": f, "share": n / g["samples"]} for f, n in own[name].most_common(top)]
    return {"seconds": seconds, "rate_hz": RATE_HZ, "groups": groups}
