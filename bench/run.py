"""edgefit's benchmark, as /work/shared/BENCH.md defines it; ``make bench`` runs it.

One run on one machine measures, in order: the floor (raw onnxruntime loops, and inference
alone); each variant's idle in-process latency, which picks the overload variant (the most
accurate that meets the overload budget when idle); the BentoML peer (throughput at 1, 4, 12
clients; its capacity on the overload variant, then 2x that capacity offered); then edgefit:
overhead with a pinned variant (closed loop at 1, 4, 12 clients), budget tiers (sequential
requests), and overload at the peer's offered rate, with selection; then regret against the best
pinned variant at budgets placed on this device's frontier, under load, at 2x overload and with
mixed budgets, for the whole store and its resolution ladder alone (bench/regret.py); then
confidence cascades against cascade=false (bench/cascade.py). One server at a time. Every figure
but regret's and the cascades' is the median over repeats. Results:
bench/results/bench.{json,md,png}, regret.png and cascade.{json,md}; the headlines are printed at
the end.

Environment: BENCH_QUICK=1 (a fast smoke run), BENCH_PROFILE=1 (also profile the server
under load with py-spy), EDGEFIT_STORE_DIR, EDGEFIT_SAMPLE_DIR,
BENCH_WORKERS / BENCH_THREADS (default: the server's own defaults), BENCH_VARIANTS (the pinned
variants, comma-separated), BENCH_ACCURATE_VARIANT, BENCH_PEER_VARIANT.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model_store, service

import cascade
import client
import floor
import numpy as np
import pyspy
import regret
import report
import servers

REPO = servers.REPO
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")
PROFILE_S = 5.0 if QUICK else 10.0
REPEATS = 1 if QUICK else 3
CLOSED_S = 1.5 if QUICK else 4.0
FLOOR_S = 1.5 if QUICK else 3.0
OPEN_S = 4.0 if QUICK else 10.0
TIER_REQUESTS = 40 if QUICK else 200
CONCURRENCY = (1, 4, 12)
TIERS_MS = (10, 20, 50)
OVERLOAD_BUDGET_MS = 20
IMAGE_STRIDE = 20  # the named subset: every 20th file of the sorted sample, 50 images
IDLE_RUNS = 40 if QUICK else 100  # per variant tried for the overload variant
# The variant of the headlines: the typical pick on this machine.
HEADLINE = "lite0-224-int8"

T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.0f}s] {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field over repeats; the repeats are kept beside it."""
    keys = [k for k, v in repeats[0].items() if isinstance(v, int | float) or v is None]
    out: dict[str, Any] = {k: median([r[k] for r in repeats]) for k in keys}
    out["repeats"] = repeats
    return out


def closed_summary(run: client.Run) -> dict[str, Any]:
    ok = [s for s in run.samples if s.status == 200]
    overheads = [s.overhead_ms for s in ok if s.overhead_ms is not None]
    client_ms = [s.client_ms for s in ok]
    return {
        "requests": len(run.samples),
        "non_200": len(run.samples) - len(ok) + len(run.errors),
        "per_s": len(ok) / run.wall_s,
        "client_p50_ms": pct(client_ms, 50),
        "client_p99_ms": pct(client_ms, 99),
        "overhead_p50_ms": pct(overheads, 50),
        "overhead_p99_ms": pct(overheads, 99),
        "decode_p50_ms": pct([s.decode_ms for s in ok if s.decode_ms is not None], 50),
        "client_cores": run.client_cores,
    }


def open_summary(run: client.Run, budget_ms: float, top1_of: dict[str, float | None]) -> dict[str, Any]:
    """``top1_of``: each variant's manifest top-1 (the peer does not report it)."""
    ok = [s for s in run.samples if s.status == 200]
    shed = [s for s in run.samples if s.status == 503]
    server_clock = [s for s in ok if s.budget_met is not None]
    met_server = sum(1 for s in server_clock if s.budget_met)
    met_client = sum(1 for s in ok if s.client_ms <= budget_ms)
    # Goodput by the server's clock where the server has one (edgefit), else by the client's.
    good = (
        [s for s in server_clock if s.budget_met]
        if server_clock
        else [s for s in ok if s.client_ms <= budget_ms]
    )
    top1 = [top1_of.get(s.variant or "") or 0.0 for s in ok]
    weighted = sum(top1_of.get(s.variant or "") or 0.0 for s in good)
    return {
        "offered": len(run.samples) + len(run.errors),
        "answered": len(ok),
        "shed_503": len(shed),
        "other_errors": len(run.samples) - len(ok) - len(shed) + len(run.errors),
        "goodput_per_s": len(good) / run.wall_s,
        # Answers within budget x their variant's top-1, per second.
        "weighted_goodput_per_s": weighted / run.wall_s,
        "budget_met_server": met_server / len(server_clock) if server_clock else None,
        "budget_met_client": met_client / len(ok) if ok else None,
        "served_top1": statistics.fmean(top1) if top1 else None,
        "client_p50_ms": pct([s.client_ms for s in ok], 50),
        "client_p99_ms": pct([s.client_ms for s in ok], 99),
        "sends_late_over_100ms": sum(1 for s in run.samples if s.late_ms > 100),
        "client_cores": run.client_cores,
        "variants": dict(Counter(s.variant for s in ok if s.variant)),
    }


def repeat(n: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return medians([fn() for _ in range(n)])


def idle_variant(
    store_dir: Path, variants: Sequence[Any], threads: int, images: list[bytes], budget_ms: float
) -> tuple[str, dict[str, float]]:
    """The most accurate variant whose in-process decode + inference p95, alone on the machine,
    meets ``budget_ms``; and the p95 of each variant tried (most accurate first)."""
    tried: dict[str, float] = {}
    for v in sorted(variants, key=lambda v: -(v.top1 or 0.0)):
        tried[v.name] = floor.idle_p95_ms(store_dir, v.name, threads, images, IDLE_RUNS)
        if tried[v.name] <= budget_ms:
            return v.name, tried
    return min(tried, key=lambda n: tried[n]), tried


def main() -> int:
    store_dir = Path(os.environ.get("EDGEFIT_STORE_DIR", REPO / "model_store" / "artifacts"))
    sample_dir = Path(os.environ.get("EDGEFIT_SAMPLE_DIR", REPO.parent / "shared" / "imagenet-sample"))
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)

    from model_store.store import open_store
    from service.settings import Settings

    defaults = Settings()
    workers = int(os.environ.get("BENCH_WORKERS", defaults.workers))
    threads = int(os.environ.get("BENCH_THREADS", defaults.threads))
    manifest = open_store(store_dir).manifest
    by_name = {v.name: v for v in manifest.variants}
    top1_of = {v.name: v.top1 for v in manifest.variants}
    # The smallest lite0 int8 shows the overhead at its worst (least inference to hide it);
    # lite0-224-int8 is the typical pick and the headline. A store may lack the smallest.
    fast = next((n for n in ("lite0-128-int8", "lite0-160-int8") if n in by_name), None)
    pinned_default = [HEADLINE] if QUICK or not fast else [fast, HEADLINE]
    pinned = [n for n in os.environ.get("BENCH_VARIANTS", "").split(",") if n] or pinned_default
    peer_variant = os.environ.get("BENCH_PEER_VARIANT", pinned[-1])
    for name in [*pinned, peer_variant]:
        if name not in by_name:
            raise SystemExit(f"bench: variant {name} is not in the store {store_dir}")

    files = sorted(p for p in sample_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    files = files[::IMAGE_STRIDE]
    images = [p.read_bytes() for p in files]
    results: dict[str, Any] = {
        "machine": servers.machine(),
        "config": {
            "quick": QUICK,
            "repeats": REPEATS,
            "workers": workers,
            "threads": threads,
            "closed_loop_s": CLOSED_S,
            "floor_s": FLOOR_S,
            "open_loop_s": OPEN_S,
            "store": str(store_dir),
            "pinned": pinned,
            "headline": pinned[-1],
            "peer_variant": peer_variant,
        },
        "images": {
            "subset": f"{sample_dir.name}, sorted, every {IMAGE_STRIDE}th file",
            "count": len(images),
            "mean_bytes": int(statistics.fmean(len(b) for b in images)),
            "files": [p.name for p in files],
        },
    }
    progress(
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores, onnxruntime "
        f"{results['machine']['onnxruntime']}; {workers} workers x {threads} threads; "
        f"{len(images)} images; {'QUICK' if QUICK else 'full'} run"
    )

    # 1. Floor and inference alone, before any server runs.
    results["floor"] = {}
    for name in pinned:
        entry = {}
        for mode, infer_only in (("full", False), ("infer_only", True)):
            progress(f"floor {name} {mode}")
            runs = floor.measure(store_dir, name, workers, threads, images, infer_only, FLOOR_S, REPEATS)
            entry[mode] = medians([{"per_s": r.per_s, "p50_ms": r.p50_ms} for r in runs])
        results["floor"][name] = entry
        progress(
            f"floor {name}: {entry['full']['per_s']:.1f}/s full, "
            f"{entry['infer_only']['per_s']:.1f}/s inference alone"
        )

    # 2. The overload variant: the most accurate that meets the budget alone on the machine.
    accurate, tried = idle_variant(store_dir, manifest.variants, threads, images, OVERLOAD_BUDGET_MS)
    progress(f"overload variant {accurate} (idle p95 {tried[accurate]:.1f} ms in-process)")
    results["overload"] = {
        "budget_ms": OVERLOAD_BUDGET_MS,
        "variant": accurate,
        "idle_p95_ms_in_process": tried,
        "systems": {},
    }
    budget_q = f"budget={OVERLOAD_BUDGET_MS}ms"

    # 3. The peer, alone: throughput on the pinned variant; capacity and overload on `accurate`.
    progress("peer: BentoML " + servers.peer_version())
    results["peer"] = {"server": "BentoML " + servers.peer_version(), "variant": peer_variant}
    with servers.peer(store_dir, peer_variant, threads, out_dir) as port:
        payloads = client.multipart_payloads("/classify", images)
        client.closed_loop("127.0.0.1", port, payloads, 4, 1.0)  # warm-up
        for c in CONCURRENCY:
            results["peer"][str(c)] = repeat(
                REPEATS,
                lambda c=c: closed_summary(client.closed_loop("127.0.0.1", port, payloads, c, CLOSED_S)),
            )
            progress(f"peer x{c}: {results['peer'][str(c)]['per_s']:.1f}/s")
    with servers.peer(store_dir, accurate, threads, out_dir) as port:
        payloads = client.multipart_payloads("/classify", images)
        client.closed_loop("127.0.0.1", port, payloads, 2, 1.0)  # warm-up
        idle = client.closed_loop_count("127.0.0.1", port, payloads, TIER_REQUESTS // 4)
        capacity = max(
            repeat(
                REPEATS,
                lambda c=c: closed_summary(client.closed_loop("127.0.0.1", port, payloads, c, CLOSED_S)),
            )["per_s"]
            for c in (4, 12)
        )
        rate = 2 * capacity
        results["overload"].update(
            peer_capacity_per_s=capacity,
            rate_per_s=rate,
            peer_idle_p95_ms=pct([s.client_ms for s in idle.samples if s.status == 200], 95),
        )
        progress(f"peer capacity on {accurate}: {capacity:.1f}/s; offering {rate:.1f}/s")
        peer_row = repeat(
            REPEATS,
            lambda: open_summary(
                client.open_loop("127.0.0.1", port, payloads, rate, OPEN_S), OVERLOAD_BUDGET_MS, top1_of
            ),
        )
        results["overload"]["systems"][f"BentoML (pinned {accurate})"] = peer_row
        progress(f"overload peer: goodput {peer_row['goodput_per_s']:.1f}/s")

    # Every variant of the store served, so that the pinned comparisons may pin any of them and the
    # rows compare with earlier runs; what this device's frontier of the store delivers is
    # bench/regret.py's subject.
    with servers.edgefit(
        store_dir, workers, threads, out_dir, extra_env={"EDGEFIT_FRONTIER": "false"}
    ) as server:
        port = server.port
        progress(f"edgefit ready on port {port}")
        # 4. Overhead: pinned variants, closed loop.
        results["overhead"] = {}
        for name in pinned:
            payloads = client.raw_payloads(f"/classify?model={name}", images)
            client.closed_loop("127.0.0.1", port, payloads, 4, 1.0)  # warm-up
            rows = {}
            for c in CONCURRENCY:
                row = repeat(
                    REPEATS,
                    lambda p=payloads, c=c: closed_summary(
                        client.closed_loop("127.0.0.1", port, p, c, CLOSED_S)
                    ),
                )
                row["vs_floor"] = row["per_s"] / results["floor"][name]["full"]["per_s"]
                row["vs_inference"] = row["per_s"] / results["floor"][name]["infer_only"]["per_s"]
                peer = results["peer"][str(c)] if name == peer_variant else None
                row["vs_peer"] = row["per_s"] / peer["per_s"] if peer and peer["per_s"] else None
                rows[str(c)] = row
                progress(
                    f"edgefit {name} x{c}: {row['per_s']:.1f}/s ({row['vs_floor']:.0%} of floor, "
                    f"{row['vs_inference']:.0%} of inference alone), overhead p50 "
                    f"{row['overhead_p50_ms']:.2f} ms, decode p50 {row['decode_p50_ms']:.2f} ms"
                )
            results["overhead"][name] = rows
        if PROFILE:
            # An extra run, not one of the measured ones: py-spy costs the server some time.
            name = pinned[0]
            progress(f"profiling edgefit {name} x4 with py-spy")
            raw = out_dir / "profile-raw.txt"
            spy = pyspy.start(server.pid, PROFILE_S, raw)
            client.closed_loop(
                "127.0.0.1", port, client.raw_payloads(f"/classify?model={name}", images), 4,
                PROFILE_S + 1,
            )  # fmt: skip
            spy.wait(timeout=60)
            results["profile"] = {"variant": name, "clients": 4, **pyspy.summarize(raw, PROFILE_S)}
        # The peer receives multipart; edgefit accepts it too, so also measure exactly those bytes.
        multipart = client.multipart_payloads(f"/classify?model={peer_variant}", images)
        results["edgefit_multipart"] = {}
        for c in CONCURRENCY:
            row = repeat(
                REPEATS,
                lambda c=c: closed_summary(client.closed_loop("127.0.0.1", port, multipart, c, CLOSED_S)),
            )
            peer = results["peer"][str(c)]
            row["vs_peer"] = row["per_s"] / peer["per_s"] if peer["per_s"] else None
            results["edgefit_multipart"][str(c)] = row
        progress("edgefit multipart done")

        # 5. Budget tiers: sequential requests, the server choosing the variant.
        results["budget_tiers"] = {}
        for tier in TIERS_MS:
            run = client.closed_loop_count(
                "127.0.0.1",
                port,
                client.raw_payloads(f"/classify?budget={tier}ms", images),
                TIER_REQUESTS,
            )
            ok = [s for s in run.samples if s.status == 200]
            met = [s for s in ok if s.budget_met]
            overheads = [s.overhead_ms for s in ok if s.overhead_ms is not None]
            results["budget_tiers"][str(tier)] = {
                "requests": len(run.samples),
                "answered": len(ok),
                "shed_503": sum(1 for s in run.samples if s.status == 503),
                "budget_met": len(met) / len(ok) if ok else None,
                "overhead_p50_ms": pct(overheads, 50),
                "served_top1": statistics.fmean(s.top1 for s in ok if s.top1 is not None) if ok else None,
                "variants": dict(Counter(s.variant for s in ok if s.variant)),
            }
            progress(f"budget {tier} ms: {results['budget_tiers'][str(tier)]['budget_met']:.1%} met")

        # 6. Overload on edgefit, offered what the peer was: with selection (answering late when
        # it must, or refusing with strict=true), and pinned to the peer's variant.
        for system, query in (
            ("edgefit (selection)", budget_q),
            ("edgefit (selection, strict)", f"{budget_q}&strict=true"),
            (f"edgefit (pinned {accurate})", f"{budget_q}&model={accurate}"),
        ):
            payloads = client.raw_payloads(f"/classify?{query}", images)
            results["overload"]["systems"][system] = repeat(
                REPEATS,
                lambda p=payloads: open_summary(
                    client.open_loop("127.0.0.1", port, p, rate, OPEN_S), OVERLOAD_BUDGET_MS, top1_of
                ),
            )
            progress(
                f"overload {system}: goodput "
                f"{results['overload']['systems'][system]['goodput_per_s']:.1f}/s "
                f"at {rate:.1f}/s offered"
            )

    # 7. Regret against the best pinned variant, and mixed budgets: the whole store and its ladder.
    results["regret"] = regret.measure(store_dir, sample_dir, workers, threads, out_dir, progress)

    # 8. Confidence cascades against cascade=false: idle at every budget, 2x overload, escalation.
    results["cascade"] = cascade.measure(store_dir, sample_dir, workers, threads, out_dir, progress)
    cascade.write(results["cascade"], out_dir, ["# Confidence cascades against cascade=false", ""])

    results["elapsed_s"] = time.monotonic() - T0
    (out_dir / "bench.json").write_text(json.dumps(results, indent=1))
    (out_dir / "bench.md").write_text(report.markdown(results))
    report.plot(results, out_dir / "bench.png")
    regret.plot(results["regret"], "delivered against the best pinned variant", out_dir / "regret.png")
    progress(f"wrote {out_dir}/bench.json, bench.md, bench.png, regret.png, cascade.md")
    print("\n".join(report.headlines(results)))
    print(f"\nThe whole report: {out_dir / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
