"""Regret: how far ``?budget=B`` falls behind the best hand-pinned variant, at budgets placed on
this device's frontier (BENCH.md, "Device-relative budgets" and after).

Servers on the same store: one serving every variant (the pin sweep's), the whole store as
served (this device's frontier of it, chosen at its start) and the ladder alone
(``EDGEFIT_VARIANTS`` = the full-depth variants), all up at once and measured in turn, so that
what compares them is measured in the same minutes (a machine's speed moves over a run).
Images: every second image of the sample's held-out half, sent sequentially unless said
otherwise; budget met is the server's ``budget_met``.

1. Pin sweep (whole store, every variant served: ``EDGEFIT_FRONTIER=false``): every variant
   pinned (``?model=``), all in turn, twice; per
   variant its accuracy and the p50 / p99 of the server's ``timing.total_ms`` over both passes
   (and its p50 in each pass: how far the machine drifted over the sweep).
2. Budgets: each variant's p99 rounded up to 0.5 ms, deduplicated, and the midpoints between
   consecutive ones.
3. Oracle at B, per system over its own variants: the most accurate variant whose pinned totals
   met B on at least 99 % of its requests; oracle accuracy = its pinned accuracy.
4. Delivered at B, on the whole store's server and the ladder's in turn (which goes first
   alternates between budgets): a few uncounted warm-up requests with ``?budget=B``, then the
   images twice in a row. Delivered = answers correct and on time over all images; also budget
   met over answers, the variant mix and the share of requests whose variant moved between the
   two runs (total variation distance). Regret = oracle accuracy - the two runs' mean
   delivered, in points; none where no variant of the system meets B. In the same turn each
   oracle is replayed on the pin sweep's server, pinned with ``?budget=B``, the same way:
   regret against the replay = what hand-pinning the oracle delivered in those minutes - what
   the system delivered. The oracle's accuracy assumes it meets B every time; a machine slower
   than during the sweep, or a budget at the oracle's own p99, makes the replay fall short of
   it, and the replay says by how much.
5. Under load, at the mid budget (where lite0-224-int8 is the whole store's oracle: the middle
   of those budgets, or its own p99 budget if it never is): open loop at twice the pace of one
   sequential client on that oracle (1000 / its pinned p50 client round trip), correct answers
   on time per second, for both systems and then, on the pin sweep's server, for the most
   accurate variants that met B pinned.
6. Overload: open loop at 20 ms, offered twice the ladder's sequential rate there times the
   workers (the ladder's oracle at 20 ms, by its pinned p50 client round trip), both systems:
   correct answers on time per offered request.
7. Mixed budgets (bench/mixed.py) on both systems, on fresh servers (started together, then
   measured in turn): right after the overload, a server's tiers still carried its waits and
   misses. Every server of the run shares one cache, so the fresh whole-store server serves the
   frontier the first one chose (two uncached starts may choose differently).
8. Drift: the ladder's variants pinned again after the overload (on the pin sweep's server), on
   the first ``DRIFT_IMAGES`` images, their p50 against the pin sweep's on the same images. The
   budgets and oracles come from the sweep: on a machine that changed speed since, they sit in
   the wrong places, and the report says so (``DRIFT_WARN``).

``bench/run.py`` runs it as part of ``make bench``. Alone (``python bench/regret.py``) it writes
``bench/results/regret.{json,md,png}`` and prints the tables; progress goes to stderr.
Environment: as ``bench/run.py`` (BENCH_QUICK, EDGEFIT_STORE_DIR, EDGEFIT_SAMPLE_DIR,
BENCH_WORKERS, BENCH_THREADS).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import client
import mixed
import numpy as np
import servers

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
HOST = "127.0.0.1"
STRIDE = 10 if QUICK else 2  # of the held-out half: 50 or 250 images
PASSES = 2
DRIFT_IMAGES = 50
DRIFT_WARN = 0.10  # a variant's p50 moved by more than this between the sweep and the end
WARMUP = 5  # requests at a budget before its counted runs
MET_SHARE = 0.99  # of its pinned totals a variant must meet for the oracle
AHEAD_POINTS = 1.5
MID_VARIANT = "lite0-224-int8"
LOAD_S = 4.0 if QUICK else 15.0
OVERLOAD_S = 4.0 if QUICK else 10.0  # shorter: the whole must fit ~12 minutes on 2 cores
MAX_PINNED_UNDER_LOAD = 6
OVERLOAD_BUDGET_MS = 20.0
OVERLOAD_FACTOR = 2.0
MIXED_S = 3.0 if QUICK else 10.0  # per client count, one repeat, for the same reason
SYSTEMS = ("whole", "ladder")

Images = Sequence[tuple[bytes, int]]
Progress = Callable[[str], None]


def payloads(images: Images, query: str) -> list[client.Payload]:
    return [client.Payload(f"/classify?{query}", body, "image/jpeg", label) for body, label in images]


def sequential(port: int, images: Images, query: str, warmup: int = 0) -> client.Run:
    requests = payloads(images, query)
    if warmup:
        client.closed_loop_count(HOST, port, requests, warmup)
    return client.closed_loop_count(HOST, port, requests, len(requests))


def tally(run: client.Run) -> dict[str, Any]:
    ok = [s for s in run.samples if s.status == 200]
    judged = [s for s in ok if s.budget_met is not None]
    return {
        "requests": len(run.samples) + len(run.errors),
        "answered": len(ok),
        "shed_503": sum(1 for s in run.samples if s.status == 503),
        "errors": len(run.samples) - len(ok) + len(run.errors),
        "correct_on_time": sum(1 for s in ok if s.class_id == s.label and s.budget_met),
        "met": sum(1 for s in judged if s.budget_met),
        "judged": len(judged),
        "budget_met": sum(1 for s in judged if s.budget_met) / len(judged) if judged else None,
        "variants": dict(Counter(s.variant for s in ok if s.variant)),
    }


def served(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/models", timeout=10) as r:
        return list(json.load(r)["variants"])


def server_totals(samples: Sequence[client.Sample]) -> list[float]:
    """Each request's server total; a failed request never met anything (inf)."""
    return [s.total_ms if s.status == 200 and s.total_ms is not None else math.inf for s in samples]


def pin_sweep(port: int, names: Sequence[str], images: Images, progress: Progress) -> dict[str, Any]:
    passes: dict[str, list[list[client.Sample]]] = {n: [] for n in names}
    for p in range(PASSES):
        for name in names:
            progress(f"pin sweep, pass {p + 1} of {PASSES}: {name}")
            passes[name].append(sequential(port, images, f"model={name}").samples)

    out = {}
    for name, runs in passes.items():
        samples = [s for run in runs for s in run]
        totals = server_totals(samples)
        out[name] = {
            "accuracy": sum(1 for s in samples if s.class_id == s.label) / len(samples),
            "p50_ms": float(np.percentile(totals, 50)),
            # The machine's drift over the sweep: the same variant and images, pass by pass.
            "pass_p50_ms": [float(np.percentile(server_totals(run), 50)) for run in runs],
            "head_p50_ms": float(
                np.percentile(server_totals([s for r in runs for s in r[:DRIFT_IMAGES]]), 50)
            ),
            "p99_ms": float(np.percentile(totals, 99)),
            "client_p50_ms": float(np.percentile([s.client_ms for s in samples], 50)),
            "totals_ms": sorted(round(t, 3) for t in totals),
        }
    return out


def drift(
    port: int, names: Sequence[str], images: Images, sweep: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """Each variant pinned again on the first ``DRIFT_IMAGES`` images: its p50 total now against the
    pin sweep's on the same images, and the largest change."""
    changes = {}
    for name in names:
        progress(f"drift check: {name}")
        run = sequential(port, images[:DRIFT_IMAGES], f"model={name}")
        now = float(np.percentile(server_totals(run.samples), 50))
        changes[name] = {"sweep_p50_ms": sweep[name]["head_p50_ms"], "end_p50_ms": now}
    worst = max(changes, key=lambda n: abs(changes[n]["end_p50_ms"] / changes[n]["sweep_p50_ms"] - 1))
    change = changes[worst]["end_p50_ms"] / changes[worst]["sweep_p50_ms"] - 1
    return {"variants": changes, "worst": worst, "worst_change": change, "drifted": abs(change) > DRIFT_WARN}


def budgets(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant's p99 rounded up to 0.5 ms, and the midpoints between consecutive ones."""
    p99s = sorted({math.ceil(v["p99_ms"] * 2) / 2 for v in sweep.values()})
    out: list[dict[str, Any]] = []
    for i, ms in enumerate(p99s):
        if i:
            out.append({"ms": (p99s[i - 1] + ms) / 2, "kind": "midpoint"})
        out.append({"ms": ms, "kind": "p99"})
    return out


def meets(sweep: dict[str, Any], name: str, ms: float) -> bool:
    totals = sweep[name]["totals_ms"]
    return sum(1 for t in totals if t <= ms) >= MET_SHARE * len(totals)


def oracle(sweep: dict[str, Any], names: Sequence[str], ms: float) -> str | None:
    """The most accurate of ``names`` that met ``ms`` pinned (the faster of equals)."""
    fits = [n for n in names if meets(sweep, n, ms)]
    return max(fits, key=lambda n: (sweep[n]["accuracy"], -sweep[n]["p99_ms"]), default=None)


def delivered(
    port: int, images: Images, ms: float, best: str | None, sweep: dict[str, Any], pinned: bool = False
) -> dict[str, Any]:
    """Two sequential runs at ``ms`` after a warm-up, against the oracle ``best``; ``pinned``: every
    request pinned to ``best`` (``?model=``) with the same budget."""
    query = f"budget={ms:g}ms" + (f"&model={best}" if pinned else "")
    runs = [tally(sequential(port, images, query, WARMUP if i == 0 else 0)) for i in range(2)]
    a, b = (Counter(r["variants"]) for r in runs)
    accuracy = statistics.fmean(r["correct_on_time"] / len(images) for r in runs)
    oracle_accuracy = None if best is None else sweep[best]["accuracy"]
    return {
        "oracle": best,
        "oracle_accuracy": oracle_accuracy,
        "delivered": accuracy,
        "regret_pt": None if oracle_accuracy is None else 100 * (oracle_accuracy - accuracy),
        "budget_met": sum(r["met"] for r in runs) / max(1, sum(r["judged"] for r in runs)),
        "moved": sum(((a - b) + (b - a)).values()) / 2 / len(images),
        "runs": runs,
    }


def replayed(row: dict[str, Any], replay: dict[str, Any] | None) -> dict[str, Any]:
    """``row`` with its oracle's replay, pinned in the same minutes: what it delivered, its budget
    met, and the regret against it (None where the system has no oracle)."""
    if replay is None:
        return {**row, "replayed": None, "replayed_met": None, "regret_replayed_pt": None}
    return {
        **row,
        "replayed": replay["delivered"],
        "replayed_met": replay["budget_met"],
        "regret_replayed_pt": 100 * (replay["delivered"] - row["delivered"]),
    }


def summary(rows: Sequence[dict[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    """One system over all budgets: regret (mean, worst at midpoints, worst), budget met, moves; the
    same regret against the oracle replayed, and how well the replayed oracle met the budgets."""
    regrets = [r["regret_pt"] for r in rows if r["regret_pt"] is not None]
    midpoints = [r["regret_pt"] for r, k in zip(rows, kinds, strict=True) if k == "midpoint"]
    runs = [run for r in rows for run in r["runs"]]
    replays = [(r, k) for r, k in zip(rows, kinds, strict=True) if r["replayed"] is not None]
    return {
        "mean_regret_pt": statistics.fmean(regrets) if regrets else None,
        "max_regret_midpoint_pt": max((x for x in midpoints if x is not None), default=None),
        "max_regret_pt": max(regrets, default=None),
        "budget_met": sum(r["met"] for r in runs) / max(1, sum(r["judged"] for r in runs)),
        "lowest_budget_met": min(r["budget_met"] for r in rows),
        "max_moved": max(r["moved"] for r in rows),
        "mean_regret_replayed_pt": statistics.fmean(r["regret_replayed_pt"] for r, _ in replays)
        if replays
        else None,
        "max_regret_replayed_midpoint_pt": max(
            (r["regret_replayed_pt"] for r, k in replays if k == "midpoint"), default=None
        ),
        "replayed_met": statistics.fmean(r["replayed_met"] for r, _ in replays) if replays else None,
        "replayed_lowest_met": min((r["replayed_met"] for r, _ in replays), default=None),
    }


def paired(
    whole: Sequence[dict[str, Any]], ladder: Sequence[dict[str, Any]], ms: Sequence[float]
) -> dict[str, Any]:
    """Whole − ladder delivered, in points: over every budget, and over those where the ladder keeps
    its promise (one of its variants met the budget pinned). Below those, the ladder's fastest answers
    late and often right, which the whole store's promise forbids it."""
    diffs = [100 * (w["delivered"] - d["delivered"]) for w, d in zip(whole, ladder, strict=True)]
    worst = min(range(len(diffs)), key=diffs.__getitem__)
    kept = [i for i, d in enumerate(ladder) if d["oracle"] is not None]
    worst_kept = min(kept, key=diffs.__getitem__)
    return {
        "mean_diff_pt": statistics.fmean(diffs),
        "worst_diff_pt": diffs[worst],
        "worst_budget_ms": ms[worst],
        "budgets_ahead": sum(1 for d in diffs if d >= AHEAD_POINTS),
        "kept_budgets": len(kept),
        "kept_mean_diff_pt": statistics.fmean(diffs[i] for i in kept),
        "kept_worst_diff_pt": diffs[worst_kept],
        "kept_worst_budget_ms": ms[worst_kept],
    }


def mid_budget(plan: Sequence[dict[str, Any]], oracles: Sequence[str | None], sweep: dict[str, Any]) -> int:
    hits = [i for i, o in enumerate(oracles) if o == MID_VARIANT]
    if hits:
        return hits[len(hits) // 2]
    if MID_VARIANT in sweep:
        own = math.ceil(sweep[MID_VARIANT]["p99_ms"] * 2) / 2
        return min(range(len(plan)), key=lambda i: abs(plan[i]["ms"] - own))
    return len(plan) // 2


def under_load(port: int, images: Images, query: str, rate: float, seconds: float = LOAD_S) -> dict[str, Any]:
    """Open loop at ``rate``: correct answers on time per second and per offered request."""
    run = client.open_loop(HOST, port, payloads(images, query), rate, seconds)
    row = tally(run)
    return {
        **row,
        "correct_on_time_per_s": row["correct_on_time"] / run.wall_s,
        "correct_on_time_per_offered": row["correct_on_time"] / row["requests"],
    }


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or not b["correct_on_time_per_s"]:
        return None
    return float(a["correct_on_time_per_s"] / b["correct_on_time_per_s"])


@dataclass
class Plan:
    """What the pin sweep decides for both servers: budgets, oracles, the rates under load."""

    sweep: dict[str, Any]
    pools: dict[str, list[str]]  # each system's variants
    budgets: list[dict[str, Any]]
    oracles: dict[str, list[str | None]]  # per system, per budget
    mid_ms: float
    mid_oracle: str
    rate: float
    overload_from: str
    overload_rate: float

    @classmethod
    def make(cls, sweep: dict[str, Any], variants: Sequence[dict[str, Any]], workers: int) -> Plan:
        pools = {
            "whole": [v["name"] for v in variants],
            "ladder": [v["name"] for v in variants if v.get("subnet") is None],
        }
        plan = budgets(sweep)
        oracles = {s: [oracle(sweep, pool, b["ms"]) for b in plan] for s, pool in pools.items()}
        mid = mid_budget(plan, oracles["whole"], sweep)
        # The mid budget's oracle; the fastest variant where nothing met it.
        fastest = min(pools["whole"], key=lambda n: sweep[n]["p99_ms"])
        mid_oracle = oracles["whole"][mid] or fastest
        ladder_20 = oracle(sweep, pools["ladder"], OVERLOAD_BUDGET_MS) or min(
            pools["ladder"], key=lambda n: sweep[n]["p99_ms"]
        )
        return cls(
            sweep=sweep,
            pools=pools,
            budgets=plan,
            oracles=oracles,
            mid_ms=plan[mid]["ms"],
            mid_oracle=mid_oracle,
            # One sequential client's pace on the oracle, twice.
            rate=2 * 1000 / sweep[mid_oracle]["client_p50_ms"],
            overload_from=ladder_20,
            overload_rate=OVERLOAD_FACTOR * workers * 1000 / sweep[ladder_20]["client_p50_ms"],
        )


def side_by_side(
    ports: dict[str, int],
    images: Images,
    plan: Plan,
    oracles: dict[str, list[str | None]],
    progress: Progress,
    pin_port: int,
) -> dict[str, list[dict[str, Any]]]:
    """Delivered at every budget on each server (``ports``: a name each), in turn, budget by budget:
    a difference between them is measured in the same minutes, whatever the machine's speed does
    over the whole run. In the same turn, each oracle of the budget is replayed on ``pin_port``,
    pinned with the budget: what hand-pinning it delivers in those minutes, the budget placed by
    the sweep's hindsight included. Which goes first alternates between budgets."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
    for i, b in enumerate(plan.budgets):
        progress(f"{b['ms']:g} ms ({b['kind']}), budget {i + 1} of {len(plan.budgets)}")
        best = {name: oracles[name][i] for name in ports}
        pins = [o for o in dict.fromkeys(best.values()) if o is not None]
        turn = [*((name, None) for name in ports), *((None, o) for o in pins)]
        done, replays = {}, {}
        for name, pin in turn if i % 2 == 0 else reversed(turn):
            if name is not None:
                done[name] = delivered(ports[name], images, b["ms"], best[name], plan.sweep)
            else:
                replays[pin] = delivered(pin_port, images, b["ms"], pin, plan.sweep, pinned=True)
        for name in ports:
            rows[name].append(replayed(done[name], replays.get(best[name])))
    return rows


def start(
    stack: contextlib.ExitStack,
    store_dir: Path,
    workers: int,
    threads: int,
    out_dir: Path,
    envs: dict[str, dict[str, str]],
    cache_dir: Path | None = None,
) -> dict[str, int]:
    """A server per system (``envs``: each one's environment), started in turn, up until
    ``stack`` closes: their ports. ``cache_dir``: shared by them (``servers.edgefit``)."""
    return {
        s: stack.enter_context(
            servers.edgefit(store_dir, workers, threads, out_dir, extra_env=env, cache_dir=cache_dir)
        ).port
        for s, env in envs.items()
    }


def measure(
    store_dir: Path, sample_dir: Path, workers: int, threads: int, out_dir: Path, progress: Progress
) -> dict[str, Any]:
    """The pin sweep (it sets the plan), then the whole store and the ladder alone side by side,
    the pinned variants under load beside them, then each system's mixed budgets."""
    images = servers.Setup(store_dir, sample_dir, workers, threads, out_dir).held_out(STRIDE)
    # One cache for every server of the run (latency tables, this device's frontier): the whole
    # store's fresh server for the mixed budgets serves the frontier its first server chose.
    with tempfile.TemporaryDirectory(prefix="edgefit-regret-cache-") as tmp:
        cache = Path(tmp)
        with contextlib.ExitStack() as stack:
            # Every variant of the store pinned, as an operator benchmarking them all would: the
            # oracle may be any of them, on this device's frontier or not.
            every = stack.enter_context(
                servers.edgefit(
                    store_dir,
                    workers,
                    threads,
                    out_dir,
                    extra_env={"EDGEFIT_FRONTIER": "false"},
                    cache_dir=cache,
                )
            ).port
            variants = served(every)
            sweep = pin_sweep(every, [v["name"] for v in variants], images, progress)
            plan = Plan.make(sweep, variants, workers)
            # The whole store as a server serves it (this device's frontier of it), and the ladder.
            envs = {"whole": {}, "ladder": {"EDGEFIT_VARIANTS": ",".join(plan.pools["ladder"])}}
            ports = start(stack, store_dir, workers, threads, out_dir, envs, cache)
            frontier = [v["name"] for v in served(ports["whole"])]
            rows = side_by_side(ports, images, plan, plan.oracles, progress, every)
            load, pinned = {}, {}
            for s in SYSTEMS:
                progress(f"{s}: under load, {plan.mid_ms:g} ms at {plan.rate:.1f}/s")
                load[s] = under_load(ports[s], images, f"budget={plan.mid_ms:g}ms", plan.rate)
            fits = [n for n in plan.pools["whole"] if meets(sweep, n, plan.mid_ms)]
            for name in sorted(fits, key=lambda n: -sweep[n]["accuracy"])[:MAX_PINNED_UNDER_LOAD]:
                progress(f"under load, {plan.mid_ms:g} ms at {plan.rate:.1f}/s, pinned {name}")
                pinned[name] = under_load(every, images, f"model={name}&budget={plan.mid_ms:g}ms", plan.rate)
            overload = {}
            for s in SYSTEMS:
                progress(f"{s}: overload, {OVERLOAD_BUDGET_MS:g} ms at {plan.overload_rate:.1f}/s")
                overload[s] = under_load(
                    ports[s], images, f"budget={OVERLOAD_BUDGET_MS:g}ms", plan.overload_rate, OVERLOAD_S
                )
            drifted = drift(every, plan.pools["ladder"], images, sweep, progress)
        # On fresh servers: right after the overload, a server's tiers still carry its waits and misses.
        with contextlib.ExitStack() as stack:
            ports = start(stack, store_dir, workers, threads, out_dir, envs, cache)
            mixed_runs = {}
            for s in SYSTEMS:
                progress(f"{s}: mixed budgets, on a fresh server")
                mixed_runs[s] = mixed.measure(ports[s], images, MIXED_S, 1)
    kinds = [b["kind"] for b in plan.budgets]
    ms = [b["ms"] for b in plan.budgets]
    best = max(pinned.values(), key=lambda r: r["correct_on_time_per_s"], default=None)
    return {
        "images": len(images),
        "workers": workers,
        "threads": threads,
        "sweep": sweep,
        "frontier": frontier,
        "ladder": plan.pools["ladder"],
        "budgets": [{**b, **{s: rows[s][i] for s in SYSTEMS}} for i, b in enumerate(plan.budgets)],
        "summary": {s: summary(rows[s], kinds) for s in SYSTEMS},
        "paired": paired(rows["whole"], rows["ladder"], ms),
        "under_load": {
            "budget_ms": plan.mid_ms,
            "oracle": plan.mid_oracle,
            "rate_per_s": plan.rate,
            "seconds": LOAD_S,
            "systems": {**load, **{f"pinned {n}": r for n, r in pinned.items()}},
            "whole_over_ladder": ratio(load["whole"], load["ladder"]),
            "ladder_over_best_pinned": ratio(load["ladder"], best),
        },
        "overload": {
            "budget_ms": OVERLOAD_BUDGET_MS,
            "rate_per_s": plan.overload_rate,
            "rate_from": plan.overload_from,
            "seconds": OVERLOAD_S,
            "systems": overload,
        },
        "mixed": mixed_runs,
        "drift": drifted,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _pt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _oracle(row: dict[str, Any]) -> str:
    return "–" if row["oracle"] is None else f"{row['oracle']} {row['oracle_accuracy']:.1%}"


def mix(variants: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(variants.items(), key=lambda kv: -kv[1]))


def _load_table(systems: dict[str, Any]) -> list[str]:
    lines = [
        "| system | offered | answered | 503 | budget met | correct on time /s | per offered | variants |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, s in systems.items():
        lines.append(
            f"| {name} | {s['requests']} | {s['answered']} | {s['shed_503']} | {_pct(s['budget_met'])} "
            f"| {s['correct_on_time_per_s']:.1f} | {_pct(s['correct_on_time_per_offered'])} "
            f"| {mix(s['variants'])} |"
        )
    return lines


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def headlines(r: dict[str, Any]) -> list[str]:
    """Regret over the budgets per system, whole against ladder, and the loaded runs in one line each."""
    lines = [
        "| system | mean regret pt | max regret at midpoints pt | max regret pt | budget met (all budgets) "
        "| lowest budget met | most moved | against the replay: mean regret pt | max at midpoints pt "
        "| replayed oracle met | replayed oracle lowest met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in SYSTEMS:
        m = r["summary"][s]
        lines.append(
            f"| {s} | {_pt(m['mean_regret_pt'])} | {_pt(m['max_regret_midpoint_pt'])} "
            f"| {_pt(m['max_regret_pt'])} "
            f"| {_pct(m['budget_met'])} | {_pct(m['lowest_budget_met'])} | {m['max_moved']:.0%} "
            f"| {_pt(m['mean_regret_replayed_pt'])} | {_pt(m['max_regret_replayed_midpoint_pt'])} "
            f"| {_pct(m['replayed_met'])} | {_pct(m['replayed_lowest_met'])} |"
        )
    lines += [
        "",
        "The replay: each budget's oracle pinned again with the budget, in the same minutes as the "
        "systems (what hand-pinning it delivered there; its budget met is the mean over budgets). At "
        "a budget equal to its own sweep p99, meeting it again is about even odds.",
    ]
    p, load, over, machine = r["paired"], r["under_load"], r["overload"], r["drift"]
    w, d = over["systems"]["whole"], over["systems"]["ladder"]
    moved = machine["variants"][machine["worst"]]
    return [
        *lines,
        "",
        f"{'**Drifted: judge this run with care.** ' if machine['drifted'] else ''}Machine drift from "
        f"the pin sweep to the end (p50 total of the first {DRIFT_IMAGES} images, pinned): at most "
        f"{machine['worst_change']:+.0%} ({machine['worst']}, {moved['sweep_p50_ms']:.2f} → "
        f"{moved['end_p50_ms']:.2f} ms).",
        "",
        f"Whole − ladder, paired: mean {p['mean_diff_pt']:+.1f} pt, worst {p['worst_diff_pt']:+.1f} pt at "
        f"{p['worst_budget_ms']:g} ms; whole ahead by ≥ {AHEAD_POINTS} pt at {p['budgets_ahead']} budgets. "
        f"Where the ladder keeps its promise ({p['kept_budgets']} budgets): mean "
        f"{p['kept_mean_diff_pt']:+.1f} pt, worst {p['kept_worst_diff_pt']:+.1f} pt at "
        f"{p['kept_worst_budget_ms']:g} ms.",
        f"Under load ({load['budget_ms']:g} ms, {load['rate_per_s']:.1f}/s), correct answers on time per "
        f"second: whole / ladder {_ratio(load['whole_over_ladder'])}, ladder / best pinned "
        f"{_ratio(load['ladder_over_best_pinned'])}.",
        f"Overload ({over['budget_ms']:g} ms, {over['rate_per_s']:.1f}/s), correct answers on time per "
        f"offered request: whole {_pct(w['correct_on_time_per_offered'])} (met {_pct(w['budget_met'])}), "
        f"ladder {_pct(d['correct_on_time_per_offered'])} (met {_pct(d['budget_met'])}).",
    ]


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['images']} images (every second of the held-out half), sequential unless said otherwise; "
        f"server: {r['workers']} workers x {r['threads']} threads; totals and budget met by the server's "
        f"clock. Whole store: {len(r['sweep'])} variants, of which this device's frontier serves "
        f"{', '.join(r['frontier'])}; ladder: {', '.join(r['ladder'])}.",
        "",
        f"### Pin sweep: each variant pinned, {PASSES} passes",
        "",
        "| variant | accuracy | total p50 ms | p50 by pass ms | total p99 ms | client p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in sorted(r["sweep"].items(), key=lambda kv: kv[1]["p99_ms"]):
        by_pass = " / ".join(f"{ms:.2f}" for ms in v["pass_p50_ms"])
        lines.append(
            f"| {name}{'' if name in r['ladder'] else ' (subnet)'} | {v['accuracy']:.1%} | {v['p50_ms']:.2f} "
            f"| {by_pass} | {v['p99_ms']:.2f} | {v['client_p50_ms']:.2f} |"
        )
    lines += [
        "",
        "### Delivered and regret per budget",
        "",
        "Oracle: the most accurate variant whose pinned totals met the budget on ≥ 99 % of requests. "
        "Delivered: correct and on time over all images, two runs in a row (regret against their "
        "mean); moved: share of requests whose variant differs between the two runs; replayed: the "
        "oracle pinned with the budget in the same minutes, delivered (budget met). No oracle (–): "
        "no variant of that system met the budget pinned; its regret is left out of the summary.",
        "",
        "| budget | kind | whole oracle | replayed | whole delivered | regret pt | met | moved "
        "| ladder oracle | replayed | ladder delivered | regret pt | met | moved | whole − ladder pt |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for b in r["budgets"]:
        cells = []
        for s in SYSTEMS:
            row = b[s]
            runs = " / ".join(f"{x['correct_on_time'] / r['images']:.1%}" for x in row["runs"])
            replay = "–" if row["replayed"] is None else f"{row['replayed']:.1%} ({row['replayed_met']:.1%})"
            cells.append(
                f"{_oracle(row)} | {replay} | {runs} | {_pt(row['regret_pt'])} | {_pct(row['budget_met'])} "
                f"| {row['moved']:.0%}"
            )
        diff = 100 * (b["whole"]["delivered"] - b["ladder"]["delivered"])
        lines.append(f"| {b['ms']:g} ms | {b['kind']} | {' | '.join(cells)} | {diff:+.1f} |")
    load, over = r["under_load"], r["overload"]
    lines += [
        "",
        *headlines(r),
        "",
        f"### Under load: {load['budget_ms']:g} ms, open loop at {load['rate_per_s']:.1f}/s for "
        f"{load['seconds']:g} s",
        "",
        f"The budget where {MID_VARIANT} is the whole store's oracle (the middle one if several; its own "
        f"p99 budget if none). The rate is twice one sequential client's pace on the oracle there "
        f"({load['oracle']}: 1000 / its pinned p50 client round trip). Pinned: the "
        f"{MAX_PINNED_UNDER_LOAD} most accurate variants that met the budget pinned, at most.",
        "",
        *_load_table(load["systems"]),
        "",
        f"### Overload: {over['budget_ms']:g} ms, open loop at {over['rate_per_s']:.1f}/s for "
        f"{over['seconds']:g} s",
        "",
        f"Twice the ladder's sequential rate at {over['budget_ms']:g} ms ({over['rate_from']}, its oracle "
        f"there, by its pinned p50 client round trip) times {r['workers']} workers.",
        "",
        *_load_table(over["systems"]),
        "",
        "### Mixed budgets: whole store against the ladder alone",
        "",
        f"Closed loop, {MIXED_S:g} s per client count, each system on a fresh server. Delivered: "
        "answers with the image's class and on time, over the tier's requests.",
        "",
        "| clients | tier | whole met | ladder met | whole delivered | ladder delivered | whole served top-1 "
        "| ladder served top-1 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    whole, ladder = r["mixed"]["whole"], r["mixed"]["ladder"]
    for clients in map(str, mixed.CLIENTS):
        for tier in mixed.TIERS:
            w, d = whole[clients][tier], ladder[clients][tier]
            top1 = [f"{x:.3f}" if x is not None else "–" for x in (w["served_top1"], d["served_top1"])]
            lines.append(
                f"| {clients} | {tier} | {_pct(w['budget_met'])} | {_pct(d['budget_met'])} "
                f"| {_pct(w['delivered_accuracy'])} | {_pct(d['delivered_accuracy'])} "
                f"| {top1[0]} | {top1[1]} |"
            )
    for s in SYSTEMS:
        lines += ["", f"Mixed budgets in detail, {s}:", "", *mixed.markdown(r["mixed"][s])]
    return lines


def plot(r: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    ms = [b["ms"] for b in r["budgets"]]
    for s, color in zip(SYSTEMS, ("tab:blue", "tab:orange"), strict=True):
        for key, style, what in (
            ("delivered", "-", "delivered"),
            ("oracle_accuracy", "--", "oracle (best pinned)"),
            ("replayed", ":", "oracle replayed"),
        ):
            ys = [b[s][key] for b in r["budgets"]]
            label = f"{s}: {what}"
            ax.plot(ms, [np.nan if y is None else 100 * y for y in ys], style, color=color, label=label)
            for kind, marker in (("p99", "o"), ("midpoint", "x")):
                pts = [
                    (x, 100 * y)
                    for x, y, b in zip(ms, ys, r["budgets"], strict=True)
                    if b["kind"] == kind and y
                ]
                ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=marker, color=color, s=18)
    for b in r["budgets"]:
        if b["kind"] == "p99":
            ax.axvline(b["ms"], color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("budget, ms (dotted and o: a variant's pinned p99; x: midpoints)")
    ax.set_ylabel("correct and on time, % of images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    started = time.monotonic()
    env = servers.setup()
    m = servers.machine()

    progress = servers.progress("regret")
    progress(
        f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}; {'QUICK' if QUICK else 'full'} run"
    )
    results = measure(env.store, env.sample, env.workers, env.threads, env.results, progress)
    results.update(machine=m, load_average_at_end=os.getloadavg(), elapsed_s=time.monotonic() - started)
    title = f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}"
    caption = f"delivered against the best pinned variant, {results['images']} held-out images; {title}"
    head = [
        "# Regret against the best pinned variant" + (" (BENCH_QUICK smoke run)" if QUICK else ""),
        "",
        f"{title}; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; "
        f"run time {results['elapsed_s']:.0f} s. Command: `python bench/regret.py`.",
        "",
    ]
    text = "\n".join(head + markdown(results)) + "\n"
    (env.results / "regret.json").write_text(json.dumps(results, indent=1))
    (env.results / "regret.md").write_text(text)
    plot(results, caption, env.results / "regret.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
