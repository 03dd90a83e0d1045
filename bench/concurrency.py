"""Which concurrency model serves best on this machine: measured, not assumed.

The alternatives, for the headline variant on the same images:

- **threads**: N inference threads in one process sharing the sessions, the latency table and
  the queue (what ``edgefit serve`` does with ``EDGEFIT_WORKERS=N``, ``EDGEFIT_THREADS=1``);
- **processes**: N processes, one inference each. The in-process floor of BENCH.md is exactly
  that, with nothing to share: it is the ceiling of any multi-process server (which would also
  have to share the latency table and the queue state between processes);
- **intra-op**: one inference at a time using N intra-op threads (``EDGEFIT_WORKERS=1``,
  ``EDGEFIT_THREADS=N``).

First the three as in-process loops (decode + preprocess + inference + top-k, no HTTP: what the
model itself allows), then the server in the two configurations it supports (closed loop, 4 and
12 clients). ``make bench`` runs it after ``bench/run.py``; alone: ``python bench/concurrency.py``.
Writes bench/results/concurrency.{json,md}. Environment: BENCH_QUICK, EDGEFIT_STORE_DIR,
EDGEFIT_SAMPLE_DIR, BENCH_VARIANTS (its last name is the variant measured).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import client
import floor
import servers
from run import CLOSED_S, FLOOR_S, HEADLINE, IMAGE_STRIDE, REPEATS, closed_summary, medians, progress

CLIENTS = (4, 12)


def threads_in_one_process(
    store_dir: Path, name: str, workers: int, images: list[bytes], duration_s: float, repeats: int
) -> list[float]:
    """req/s of ``workers`` Python threads in this process sharing one session, one intra-op
    thread each (the server's model, without HTTP)."""
    from model_store.imaging import load_tensor
    from model_store.runner import VariantRunner, top_k
    from model_store.store import open_store

    store = open_store(store_dir)
    variant = store.manifest.variant(name)
    runner = VariantRunner.from_store(store, variant)
    prep = variant.preprocessing
    for data in images[: floor.WARMUP]:
        top_k(runner.infer(load_tensor(data, prep, floor.MAX_PIXELS)), 5)
    rates = []
    for _ in range(repeats):
        counts = [0] * workers
        deadline = time.perf_counter() + duration_s

        def loop(index: int, counts: list[int] = counts, deadline: float = deadline) -> None:
            i = index
            while time.perf_counter() < deadline:
                top_k(runner.infer(load_tensor(images[i % len(images)], prep, floor.MAX_PIXELS)), 5)
                counts[index] += 1
                i += workers

        start = time.perf_counter()
        pool = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        rates.append(sum(counts) / (time.perf_counter() - start))
    return rates


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    n = r["cores"]
    lines = [
        f"# Concurrency models: {r['variant']}, {n} cores",
        "",
        f"CPU: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
        + f". Medians over {r['repeats']} repeats.",
        "",
        "## In-process loops (decode + preprocess + inference + top-k, no HTTP)",
        "",
        "| model | req/s | of processes |",
        "| --- | ---: | ---: |",
    ]
    loops = r["loops"]
    for key, label in (
        ("processes", f"processes: {n} x 1 thread (the floor; ceiling of a multi-process server)"),
        ("threads", f"threads: {n} in one process, 1 intra-op thread each (edgefit's model)"),
        ("intra_op", f"intra-op: 1 inference at a time, {n} intra-op threads"),
    ):
        lines.append(f"| {label} | {loops[key]:.1f} | {loops[key] / loops['processes']:.0%} |")
    lines += [
        "",
        "## The server, closed-loop keep-alive clients, pinned variant",
        "",
        "| EDGEFIT_WORKERS x EDGEFIT_THREADS | clients | req/s | overhead p50 ms | client p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for config, rows in r["server"].items():
        for clients, row in rows.items():
            lines.append(
                f"| {config} | {clients} | {row['per_s']:.1f} | {row['overhead_p50_ms']:.3f} | "
                f"{row['client_p99_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    store_dir = Path(os.environ.get("EDGEFIT_STORE_DIR", servers.REPO / "model_store" / "artifacts"))
    sample_dir = Path(
        os.environ.get("EDGEFIT_SAMPLE_DIR", servers.REPO.parent / "shared" / "imagenet-sample")
    )
    out_dir = servers.REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = ([n for n in os.environ.get("BENCH_VARIANTS", "").split(",") if n] or [HEADLINE])[-1]
    from service.settings import available_cpus

    cores = available_cpus()
    files = sorted(p for p in sample_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))[::IMAGE_STRIDE]
    images = [p.read_bytes() for p in files]
    results: dict[str, Any] = {
        "machine": servers.machine(),
        "variant": name,
        "cores": cores,
        "repeats": REPEATS,
    }

    progress(f"concurrency: {name}, {cores} cores")
    processes = floor.measure(store_dir, name, cores, 1, images, False, FLOOR_S, REPEATS)
    intra_op = floor.measure(store_dir, name, 1, cores, images, False, FLOOR_S, REPEATS)
    threads = threads_in_one_process(store_dir, name, cores, images, FLOOR_S, REPEATS)
    results["loops"] = {
        "processes": statistics.median(r.per_s for r in processes),
        "threads": statistics.median(threads),
        "intra_op": statistics.median(r.per_s for r in intra_op),
    }
    progress("concurrency loops: " + ", ".join(f"{k} {v:.1f}/s" for k, v in results["loops"].items()))

    results["server"] = {}
    payloads = client.raw_payloads(f"/classify?model={name}", images)
    for workers, threads_each in ((cores, 1), (1, cores)):
        config = f"{workers} x {threads_each}"
        # Every variant served: the pinned one may be off this device's frontier.
        every = {"EDGEFIT_FRONTIER": "false"}
        with servers.edgefit(store_dir, workers, threads_each, out_dir, extra_env=every) as server:
            client.closed_loop("127.0.0.1", server.port, payloads, 4, 1.0)  # warm-up
            rows = {}
            for c in CLIENTS:
                rows[str(c)] = medians(
                    [
                        closed_summary(client.closed_loop("127.0.0.1", server.port, payloads, c, CLOSED_S))
                        for _ in range(REPEATS)
                    ]
                )
                progress(f"concurrency server {config} x{c}: {rows[str(c)]['per_s']:.1f}/s")
        results["server"][config] = rows

    (out_dir / "concurrency.json").write_text(json.dumps(results, indent=1))
    (out_dir / "concurrency.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
