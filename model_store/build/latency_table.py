"""This device's latency lookup table for a family's subnets, the Once-for-All way, measured here.

OFA predicts a subnet's latency as the sum of its blocks' latencies from a table measured on the
target device. We build the table with onnxruntime itself, under the serving settings (one
intra-op thread, sequential, full graph optimisation; ``model_store.runner.session_options``): the
full-depth network of a resolution and precision is run with onnxruntime's profiler, and every
kernel's time is booked to the MBConv block its node came from (the exporter names nodes after
the module path, ``/_blocks.7/...``, and the optimiser's fused nodes keep those names); the rest
is the stem and head. The profiler's own cost and the time between kernels are shared out in
proportion, so that the table's full network is its plain measurement (its fastest run, see
:func:`whole_network_ms`). Skipping a block never changes another block's shapes, so a subnet's
prediction is the stem and head plus its kept blocks; :class:`PredictionCheck` compares that
with a whole-network measurement of the subnet.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_store.runner import open_session, session_options

# A model as a store gives it: its verified bytes, and its verified shared weights file
# (``Store.verify_weights``) or None.
Model = tuple[bytes, tuple[str, bytes] | None]

CHECK_RUNS = 20
_BLOCK = re.compile(r"_blocks\.(\d+)[/._]")


@dataclass(frozen=True)
class BlockTable:
    """Per-block latency of one network at one resolution and precision, in milliseconds."""

    stem_head_ms: float
    block_ms: tuple[float, ...]

    def predict_ms(self, kept_blocks: Iterable[int]) -> float:
        return self.stem_head_ms + sum(self.block_ms[i] for i in kept_blocks)


def _block_of(node_name: str) -> int | None:
    match = _BLOCK.search(node_name)
    return int(match.group(1)) if match else None


def whole_network_ms(model: Model, resolution: int, runs: int, warmup: int = 3) -> float:
    """Fastest of ``runs`` inferences of ``model``, serving settings.

    The fastest, not the median: on a shared machine other work only ever adds time, and the
    table and its checks are measured minutes apart, under whatever load each minute brings.
    """
    session = open_session(model[0], session_options(1), model[1])
    feed = {session.get_inputs()[0].name: _noise(resolution)}
    return 1000 * min(_timed(session, feed, runs, warmup))


def _noise(resolution: int) -> np.ndarray:
    # A CNN's latency does not depend on the pixels.
    return np.random.default_rng(0).integers(0, 256, (1, resolution, resolution, 3), dtype=np.uint8)


def _timed(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int, warmup: int) -> list[float]:
    import time

    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append(time.perf_counter() - start)
    return timings


def measure_table(
    model: Model, resolution: int, total_blocks: int, whole_ms: float, runs: int = 20
) -> BlockTable:
    """The block table of the full-depth network ``model`` (a store variant), whose plain latency
    (:func:`whole_network_ms`) is ``whole_ms``."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = open_session(model[0], options, model[1])
        feed = {session.get_inputs()[0].name: _noise(resolution)}
        _timed(session, feed, runs, warmup=3)
        events = json.loads(Path(session.end_profiling()).read_text())

    # Per run: kernel microseconds by block (None: stem and head); a run's kernel events come
    # before the run's own ``model_run`` event.
    nodes: dict[str, int | None] = {}
    runs_us: list[dict[int | None, float]] = []
    current: dict[int | None, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs_us.append(current)
            current = defaultdict(float)
        elif event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            block = nodes.setdefault(node, _block_of(node))
            current[block] += float(event["dur"])
    # Kernel times from the fastest half of the runs, for the same reason as whole_network_ms.
    fastest = sorted(runs_us[-runs:], key=lambda run: sum(run.values()))[: max(1, runs // 2)]
    kernel_ms = {
        block: statistics.median(run.get(block, 0.0) for run in fastest) / 1000
        for block in set(nodes.values())
    }
    # Profiling adds its own cost to every kernel and leaves out the time between kernels:
    # scale the kernel times so that the full network's prediction is its plain measurement.
    scale = whole_ms / sum(kernel_ms.values())
    return BlockTable(
        stem_head_ms=scale * kernel_ms.get(None, 0.0),
        block_ms=tuple(scale * kernel_ms.get(i, 0.0) for i in range(total_blocks)),
    )


@dataclass(frozen=True)
class PredictionCheck:
    name: str
    predicted_ms: float
    measured_ms: float
    # The subnet's full network, measured right beside it.
    full_measured_ms: float

    @property
    def error(self) -> float:
        """Relative error of the prediction, ``|predicted - measured| / measured``."""
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms


def check_prediction(
    name: str, table: BlockTable, kept: tuple[int, ...], subnet: Model, full: Model, resolution: int
) -> PredictionCheck:
    """The table's prediction for a subnet against its measurement.

    The full network is measured right beside the subnet and sets the table's scale at that
    moment: on a shared machine the load changes between the table and its checks, and that
    change is not the table's error (on a quiet machine the factor is 1).
    """
    full_ms = whole_network_ms(full, resolution, CHECK_RUNS)
    measured = whole_network_ms(subnet, resolution, CHECK_RUNS)
    scale = full_ms / table.predict_ms(range(len(table.block_ms)))
    return PredictionCheck(name, scale * table.predict_ms(kept), measured, full_ms)


def error_summary(checks: Sequence[PredictionCheck]) -> tuple[float, float]:
    """Median and p90 relative error (nearest rank)."""
    errors = sorted(c.error for c in checks)
    p90 = errors[min(len(errors) - 1, int(np.ceil(0.9 * len(errors))) - 1)]
    return statistics.median(errors), p90
