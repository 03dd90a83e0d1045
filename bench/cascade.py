"""Confidence cascades against the same server with ``cascade=false``.

One server on the store (its plans served by default), and a fresh one per overload run.
Images: every second image of the sample's held-out half, as ``bench/regret.py`` sends them.

1. Pin sweep (``regret.pin_sweep``) and the device-relative budgets from it (``regret.budgets``:
   each variant's pinned p99 and the midpoints).
2. Idle, sequential, at every budget: the images once with ``cascade=false`` and once with the
   server's default, one right after the other (paired; which goes first alternates between
   budgets). Delivered = correct and on time over all images; the server's process CPU seconds
   per answer (``/proc/<pid>/stat``). Then the same above the frontier, at each plan's budget:
   its stages' pinned p99s together (a plan must fit at its worst case, so one ending in the
   slowest variant never fits a device-relative budget).
3. 2x overload: open loop at the top budget, offered twice the sequential rate of the most
   accurate variant that met it pinned (1000 / its pinned p50 client round trip), for
   ``OVERLOAD_S``, with and without cascades, each on a fresh server: correct answers on time
   per second, budget met.
4. Escalation under traffic: per plan, the share of its runs whose first stage was unsure (it
   escalated, or wanted to and ran out of time), over every cascade answer of 2 and 3, against
   the rate the store recorded on the held-out half.

``bench/run.py`` runs it after regret; alone (``python bench/cascade.py``) it writes
``bench/results/cascade.{json,md}``. Environment: as ``bench/run.py``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import client
import regret
import servers

QUICK = regret.QUICK
OVERLOAD_S = 4.0 if QUICK else 15.0
MODES = {"single": "cascade=false", "cascade": "cascade=true"}
Progress = Callable[[str], None]


def plans(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{regret.HOST}:{port}/models", timeout=10) as r:
        return list(json.load(r)["cascades"])


def idle_row(server: servers.Edgefit, images: regret.Images, ms: float, first: str) -> dict[str, Any]:
    """Both modes at ``ms``, sequential and paired, ``first`` first: delivered, budget met, CPU
    per answer."""
    row: dict[str, Any] = {"ms": ms}
    for mode, query in sorted(MODES.items(), key=lambda m: m[0] != first):
        cpu = servers.cpu_seconds(server.pid)
        run = regret.sequential(server.port, images, f"budget={ms:g}ms&{query}", regret.WARMUP)
        cpu = servers.cpu_seconds(server.pid) - cpu
        tally = regret.tally(run)
        row[mode] = {
            **tally,
            "delivered": tally["correct_on_time"] / len(images),
            # The warm-up's requests ran in the same window: count them in.
            "cpu_ms_per_answer": 1000 * cpu / max(1, tally["answered"] + regret.WARMUP),
            "escalations": escalations(run.samples),
        }
    return row


def plan_budget(sweep: dict[str, Any], plan: dict[str, Any]) -> float:
    """Where ``plan`` fits at its worst case with room: its stages' pinned p99 totals together,
    rounded up to half a millisecond."""
    return math.ceil(2 * (sweep[plan["small"]]["p99_ms"] + sweep[plan["big"]]["p99_ms"])) / 2


def escalations(samples: Sequence[client.Sample]) -> dict[str, dict[str, int]]:
    """Per plan: its runs, and how they ended (answered, escalated, out_of_time)."""
    out: dict[str, Counter[str]] = {}
    for s in samples:
        if s.plan is not None and s.escalation is not None:
            out.setdefault(s.plan, Counter())[s.escalation] += 1
    return {plan: dict(c) for plan, c in out.items()}


def merged(parts: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, Counter[str]] = {}
    for part in parts:
        for plan, counts in part.items():
            total.setdefault(plan, Counter()).update(counts)
    return {plan: dict(c) for plan, c in total.items()}


def overload(
    setup: servers.Setup, images: regret.Images, sweep: dict[str, Any], top_ms: float, progress: Progress
) -> dict[str, Any]:
    """Both modes at ``top_ms``, open loop at twice the pace of the top budget's pinned oracle,
    each on a fresh server: an overload leaves late answers in the calibration for a minute,
    which would price the second mode's run."""
    names = list(sweep)
    source = regret.oracle(sweep, names, top_ms) or min(names, key=lambda n: sweep[n]["p99_ms"])
    rate = 2 * 1000 / sweep[source]["client_p50_ms"]
    out: dict[str, Any] = {
        "budget_ms": top_ms,
        "rate_from": source,
        "rate_per_s": rate,
        "seconds": OVERLOAD_S,
    }
    for mode, query in MODES.items():
        progress(f"cascade: 2x overload at {top_ms:g} ms, {rate:.1f}/s, {query}, on a fresh server")
        with servers.edgefit(setup.store, setup.workers, setup.threads, setup.results) as server:
            payloads = regret.payloads(images, f"budget={top_ms:g}ms&{query}")
            client.closed_loop_count(regret.HOST, server.port, payloads, regret.WARMUP)
            run = client.open_loop(regret.HOST, server.port, payloads, rate, OVERLOAD_S)
        tally = regret.tally(run)
        out[mode] = {
            **tally,
            "correct_on_time_per_s": tally["correct_on_time"] / run.wall_s,
            "escalations": escalations(run.samples),
        }
    single = out["single"]["correct_on_time_per_s"]
    out["cascade_over_single"] = out["cascade"]["correct_on_time_per_s"] / single if single else None
    return out


def measure(
    store_dir: Path, sample_dir: Path, workers: int, threads: int, out_dir: Path, progress: Progress
) -> dict[str, Any]:
    setup = servers.Setup(store_dir, sample_dir, workers, threads, out_dir)
    images = setup.held_out(regret.STRIDE)
    with servers.edgefit(store_dir, workers, threads, out_dir) as server:
        recorded = {p["name"]: p for p in plans(server.port)}
        names = [v["name"] for v in regret.served(server.port)]
        sweep = regret.pin_sweep(server.port, names, images, progress)
        budgets = regret.budgets(sweep)
        top = max(b["ms"] for b in budgets)
        beyond = {plan_budget(sweep, p) for p in recorded.values()} - {b["ms"] for b in budgets}
        budgets += [{"ms": ms, "kind": "plan"} for ms in sorted(ms for ms in beyond if ms > top)]
        rows = []
        for i, b in enumerate(budgets):
            progress(f"cascade: {b['ms']:g} ms ({b['kind']}), budget {i + 1} of {len(budgets)}, both modes")
            rows.append({**idle_row(server, images, b["ms"], list(MODES)[i % 2]), "kind": b["kind"]})
    loaded = overload(setup, images, sweep, top, progress)
    counts = merged([r["cascade"]["escalations"] for r in rows] + [loaded["cascade"]["escalations"]])
    return {
        "images": len(images),
        "workers": workers,
        "threads": threads,
        "plans": recorded,
        "rows": rows,
        "overload": loaded,
        "escalation": {
            name: {
                "recorded": plan["escalation_rate"],
                "runs": sum(counts.get(name, {}).values()),
                "measured": (counts[name].get("escalated", 0) + counts[name].get("out_of_time", 0))
                / sum(counts[name].values())
                if counts.get(name)
                else None,
                "outcomes": counts.get(name, {}),
            }
            for name, plan in recorded.items()
        },
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['images']} held-out images, sequential at each budget, both modes on one server "
        f"({r['workers']} workers x {r['threads']} threads), paired; delivered = correct and on time.",
        "",
        "### Plans served",
        "",
        "| plan | threshold | top1 | held-out accuracy | recorded escalation |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, p in r["plans"].items():
        lines.append(
            f"| {name} | {p['threshold']:.2f} | {p['top1']:.3f} | {_pct(p['held_out_accuracy'])} "
            f"| {_pct(p['escalation_rate'])} |"
        )
    lines += [
        "",
        "### Idle, sequential, every device-relative budget, then each plan's above them",
        "",
        "| budget | kind | delivered, cascade=false | delivered, cascades | Δ pt | met (false / on) "
        "| CPU ms per answer (false / on) | cascade runs |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        s, c = row["single"], row["cascade"]
        runs = sum(sum(x.values()) for x in c["escalations"].values())
        lines.append(
            f"| {row['ms']:g} ms | {row['kind']} | {_pct(s['delivered'])} | {_pct(c['delivered'])} "
            f"| {100 * (c['delivered'] - s['delivered']):+.1f} "
            f"| {_pct(s['budget_met'])} / {_pct(c['budget_met'])} "
            f"| {s['cpu_ms_per_answer']:.2f} / {c['cpu_ms_per_answer']:.2f} | {runs} |"
        )
    relative = [row for row in r["rows"] if row["kind"] != "plan"]
    diffs = [100 * (row["cascade"]["delivered"] - row["single"]["delivered"]) for row in relative]
    lines += [
        "",
        f"Cascades − cascade=false at the device-relative budgets: worst {min(diffs):+.1f} pt, ≥ 1 pt "
        f"ahead at {sum(d >= 1 for d in diffs)} of {len(diffs)}.",
    ]
    for row in r["rows"]:
        if row["kind"] == "plan":
            s, c = row["single"], row["cascade"]
            lines.append(
                f"At {row['ms']:g} ms (a plan's): {100 * (c['delivered'] - s['delivered']):+.1f} pt, CPU per "
                f"answer {c['cpu_ms_per_answer'] / s['cpu_ms_per_answer'] - 1:+.0%}."
            )
    return lines + _loaded(r)


def _loaded(r: dict[str, Any]) -> list[str]:
    """The overload table and the escalation rates under traffic."""
    o = r["overload"]
    ratio = "–" if o["cascade_over_single"] is None else f"{o['cascade_over_single']:.2f}"
    lines = [
        "",
        f"### 2x overload: {o['budget_ms']:g} ms, open loop at {o['rate_per_s']:.1f}/s "
        f"for {o['seconds']:g} s",
        "",
        f"Twice the sequential rate of {o['rate_from']} (the most accurate variant that met the "
        "budget pinned).",
        "",
        "| mode | offered | answered | 503 | budget met | correct on time /s | variants |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode in MODES:
        m = o[mode]
        mix = ", ".join(f"{k} {v}" for k, v in sorted(m["variants"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {mode} | {m['requests']} | {m['answered']} | {m['shed_503']} | {_pct(m['budget_met'])} "
            f"| {m['correct_on_time_per_s']:.1f} | {mix} |"
        )
    lines += [
        "",
        f"Correct answers on time per second, cascades / cascade=false: {ratio}.",
        "",
        "### Escalation under traffic (every cascade answer above) against the recorded rate",
        "",
        "| plan | runs | measured | recorded | Δ pt | outcomes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, e in r["escalation"].items():
        delta = "–" if e["measured"] is None else f"{100 * (e['measured'] - e['recorded']):+.1f}"
        lines.append(
            f"| {name} | {e['runs']} | {_pct(e['measured'])} | {_pct(e['recorded'])} | {delta} "
            f"| {e['outcomes']} |"
        )
    return lines


def write(results: dict[str, Any], out_dir: Path, head: Sequence[str]) -> str:
    text = "\n".join([*head, *markdown(results)]) + "\n"
    (out_dir / "cascade.json").write_text(json.dumps(results, indent=1))
    (out_dir / "cascade.md").write_text(text)
    return text


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    started = time.monotonic()
    env = servers.setup()
    m = servers.machine()

    progress = servers.progress("cascade")
    results = measure(env.store, env.sample, env.workers, env.threads, env.results, progress)
    results.update(machine=m, load_average_at_end=os.getloadavg(), elapsed_s=time.monotonic() - started)
    head = [
        "# Confidence cascades against cascade=false" + (" (BENCH_QUICK smoke run)" if QUICK else ""),
        "",
        f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; "
        f"run time {results['elapsed_s']:.0f} s. "
        "Command: `python bench/cascade.py`.",
        "",
    ]
    print(write(results, env.results, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
