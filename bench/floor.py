"""The floor: the service's work for one image in a plain in-process loop, no HTTP, no queue.

Each loop does decode + preprocess (``model_store.imaging.load_tensor``), ``VariantRunner.infer``
and ``top_k``, with the service's intra-op threads; one loop per service worker, each in its own
process so that the loops run truly in parallel. ``infer_only`` loops over tensors decoded up
front, to show what decoding costs.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PIXELS = 50_000_000  # the contract's default image limit
WARMUP = 5


@dataclass(frozen=True)
class FloorRun:
    """One repeat: all loops together."""

    per_s: float
    p50_ms: float


def _loop(
    store_dir: str,
    variant_name: str,
    threads: int,
    images: list[bytes],
    infer_only: bool,
    durations: list[float],
    barrier: Any,
    results: Any,
) -> None:
    from model_store.imaging import load_tensor
    from model_store.runner import VariantRunner, top_k
    from model_store.store import open_store

    store = open_store(Path(store_dir))
    variant = store.manifest.variant(variant_name)
    runner = VariantRunner.from_store(store, variant, threads)
    prep = variant.preprocessing
    tensors = [load_tensor(data, prep, MAX_PIXELS) for data in images] if infer_only else []

    def once(i: int) -> None:
        if infer_only:
            top_k(runner.infer(tensors[i % len(tensors)]), 5)
        else:
            top_k(runner.infer(load_tensor(images[i % len(images)], prep, MAX_PIXELS)), 5)

    for i in range(WARMUP):
        once(i)
    for duration in durations:
        barrier.wait()  # every loop starts each repeat together
        latencies = []
        i = 0
        start = time.perf_counter()
        deadline = start + duration
        while (now := time.perf_counter()) < deadline:
            once(i)
            latencies.append((time.perf_counter() - now) * 1e3)
            i += 1
        results.put((len(latencies), time.perf_counter() - start, latencies))


def measure(
    store_dir: Path,
    variant_name: str,
    workers: int,
    threads: int,
    images: list[bytes],
    infer_only: bool,
    duration_s: float,
    repeats: int,
) -> list[FloorRun]:
    """``repeats`` runs of ``workers`` parallel loops, ``duration_s`` each."""
    ctx = mp.get_context("spawn")  # onnxruntime's thread pools do not survive fork
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_loop,
            args=(
                str(store_dir),
                variant_name,
                threads,
                images,
                infer_only,
                [duration_s] * repeats,
                barrier,
                results,
            ),
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    runs = []
    try:
        for _ in range(repeats):
            parts = [results.get(timeout=120 + duration_s) for _ in range(workers)]
            per_s = sum(count / elapsed for count, elapsed, _ in parts)
            latencies = [ms for _, _, lat in parts for ms in lat]
            runs.append(FloorRun(per_s, statistics.median(latencies)))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return runs


def idle_p95_ms(store_dir: Path, variant_name: str, threads: int, images: list[bytes], runs: int) -> float:
    """One image at a time, in this process, nothing else running: the p95 of decode + preprocess
    + inference + top-k, in ms — whether the variant itself meets a budget on an idle machine."""
    from model_store.imaging import load_tensor
    from model_store.runner import VariantRunner, top_k
    from model_store.store import open_store

    store = open_store(store_dir)
    variant = store.manifest.variant(variant_name)
    runner = VariantRunner.from_store(store, variant, threads)
    prep = variant.preprocessing
    latencies = []
    for i in range(WARMUP + runs):
        start = time.perf_counter()
        top_k(runner.infer(load_tensor(images[i % len(images)], prep, MAX_PIXELS)), 5)
        if i >= WARMUP:
            latencies.append((time.perf_counter() - start) * 1e3)
    return statistics.quantiles(latencies, n=20)[-1]
