"""Mixed budgets (BENCH.md): closed-loop clients whose every request draws its budget uniformly
from 10 / 20 / 50 ms / none, on the held-out half of the sample. Budget met per tier by the
server's ``budget_met``, served top-1, delivered accuracy (answers with the image's class and on
time, over the tier's requests), queue wait per tier, and where the late answers' time went (their
queue wait, and the server's time outside decode and inference). ``bench/regret.py`` runs it
against the whole store and the ladder alone as part of ``make bench``.

Alone (``python bench/mixed.py [--label NAME]``) it starts one server and measures only this, so
two versions of the server can be compared in one sitting: run it with ``PYTHONPATH`` pointing
at the other checkout (the server subprocess imports ``service`` from there). Writes
``bench/results/mixed-<label>.json``. Environment: as ``bench/run.py`` (BENCH_QUICK,
EDGEFIT_STORE_DIR, EDGEFIT_SAMPLE_DIR, BENCH_WORKERS, BENCH_THREADS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import client
import numpy as np

TIERS = ("10ms", "20ms", "50ms", "none")
CLIENTS = (3, 6)
REQUESTS_DRAWN = 2000  # the drawn sequence; the closed loop walks it round-robin


def payloads(images: Sequence[tuple[bytes, int | None]], seed: int = 14) -> list[client.Payload]:
    """Budgets drawn uniformly from the tiers, images (bytes, class or None) in turn; the same
    draw every run."""
    rng = random.Random(seed)
    out = []
    for i in range(REQUESTS_DRAWN):
        tier = rng.choice(TIERS)
        path = "/classify" if tier == "none" else f"/classify?budget={tier}"
        body, label = images[i % len(images)]
        out.append(client.Payload(path, body, "image/jpeg", label))
    return out


def tier_of(sample: client.Sample) -> str:
    return sample.path.partition("budget=")[2] or "none"


def summary(run: client.Run) -> dict[str, Any]:
    """Per tier: requests, answers, 503s, budget met (server's clock), served top-1, delivered
    accuracy (None without labels), queue wait."""
    out: dict[str, Any] = {
        "requests": len(run.samples),
        "errors": len(run.errors),
        "per_s": sum(1 for s in run.samples if s.status == 200) / run.wall_s,
        "client_cores": run.client_cores,
    }
    for tier in TIERS:
        mine = [s for s in run.samples if tier_of(s) == tier]
        ok = [s for s in mine if s.status == 200]
        judged = [s for s in ok if s.budget_met is not None]
        queue = [s.queue_ms for s in ok if s.queue_ms is not None]
        top1 = [s.top1 for s in ok if s.top1 is not None]
        # Where a late answer's time went: a queue no variant choice shortens, or the server's
        # own time outside decode and inference (the event loop's).
        late = [s for s in judged if not s.budget_met and s.overhead_ms is not None]
        out[tier] = {
            "requests": len(mine),
            "answered": len(ok),
            "shed_503": sum(1 for s in mine if s.status == 503),
            "budget_met": sum(1 for s in judged if s.budget_met) / len(judged) if judged else None,
            "served_top1": statistics.fmean(top1) if top1 else None,
            "delivered_accuracy": (
                sum(1 for s in ok if s.class_id == s.label and s.budget_met is not False) / len(mine)
                if mine and mine[0].label is not None
                else None
            ),
            "queue_p95_ms": float(np.percentile(queue, 95)) if queue else None,
            "total_p99_ms": float(np.percentile([s.total_ms for s in ok if s.total_ms], 99)) if ok else None,
            "late_queue_p50_ms": statistics.median(s.queue_ms for s in late) if late else None,
            "late_overhead_p50_ms": statistics.median(s.overhead_ms for s in late) if late else None,
            "variants": dict(Counter(s.variant for s in ok if s.variant)),
        }
    return out


def measure(
    port: int, images: Sequence[tuple[bytes, int | None]], seconds: float, repeats: int
) -> dict[str, Any]:
    """Each client count ``repeats`` times; the repeats are kept, tiers pooled over them."""
    drawn = payloads(images)
    client.closed_loop("127.0.0.1", port, drawn, 3, 1.0)  # warm-up: the live table, the mix
    results: dict[str, Any] = {}
    for clients in CLIENTS:
        runs = [client.closed_loop("127.0.0.1", port, drawn, clients, seconds) for _ in range(repeats)]
        pooled = client.Run(
            [s for r in runs for s in r.samples],
            sum(r.wall_s for r in runs),
            sum(r.client_cpu_s for r in runs),
            [e for r in runs for e in r.errors],
        )
        results[str(clients)] = {**summary(pooled), "repeats": [summary(r) for r in runs]}
    return results


def markdown(mixed: dict[str, Any]) -> list[str]:
    """The report's table: one row per client count and tier."""
    lines = [
        "| clients | tier | requests | budget met (server) | 503 | served top-1 | delivered "
        "| queue p95 ms | late: queue / overhead p50 ms | variants |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for clients, row in mixed.items():
        for tier in TIERS:
            t = row[tier]
            met = "–" if t["budget_met"] is None else f"{t['budget_met']:.1%}"
            top1 = "–" if t["served_top1"] is None else f"{t['served_top1']:.3f}"
            correct = "–" if t.get("delivered_accuracy") is None else f"{t['delivered_accuracy']:.1%}"
            queue = "–" if t["queue_p95_ms"] is None else f"{t['queue_p95_ms']:.1f}"
            late = (
                "–"
                if t.get("late_queue_p50_ms") is None
                else f"{t['late_queue_p50_ms']:.1f} / {t['late_overhead_p50_ms']:.1f}"
            )
            mix = ", ".join(f"{k} {v}" for k, v in sorted(t["variants"].items(), key=lambda kv: -kv[1]))
            lines.append(
                f"| {clients} | {tier} | {t['requests']} | {met} | {t['shed_503']} | {top1} | {correct} "
                f"| {queue} | {late} "
                f"| {mix} |"
            )
    return lines


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import servers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current", help="names the result file")
    args = parser.parse_args()
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    env = servers.setup()
    images = env.held_out(2)
    with servers.edgefit(env.store, env.workers, env.threads, env.results) as server:
        results = measure(server.port, images, 5.0 if quick else 15.0, 1 if quick else 3)
    results["load_average_at_end"] = os.getloadavg()
    (env.results / f"mixed-{args.label}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(markdown({k: v for k, v in results.items() if k in map(str, CLIENTS)})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
