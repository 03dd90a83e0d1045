"""Paired regret: two (or more) checkouts of the server on the same budgets, in turn.

A machine's speed moves between runs, so two ``bench/regret.py`` runs of two
versions compare two machines as much as two versions. Here one pin sweep places the
device-relative budgets and oracles, then every budget runs on each checkout's server in turn
(``regret.side_by_side``, as ``bench/regret.py`` runs the whole store and the ladder), with the
budget's oracle replayed pinned: a difference at a budget is measured in the same minute. The
sweep and the replays run on a server of their own (the first checkout's code), so that no
checkout's tables learn from pinned traffic the others do not see. The first checkout is the
baseline.

    EDGEFIT_STORE_DIR=model_store/artifacts EDGEFIT_SAMPLE_DIR=../shared/imagenet-sample \\
        .venv/bin/python bench/ab.py . ../other-checkout

Each server imports ``service`` from its checkout (``PYTHONPATH``); the store is shared, and so
is the cache (latency tables, the device's frontier: each serves what the first one chose). Writes
``bench/results/ab.json`` (every budget's row per checkout, without the raw runs) and prints a
line per budget (the oracle, each checkout's delivered accuracy, regret, budget met and the share
of requests whose variant moved between its two runs) and each checkout's summary (the same
figures as ``bench/regret.py``'s), with the paired difference against the baseline.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import regret
import servers


def main(checkouts: list[Path]) -> int:
    env = servers.setup()
    say = servers.progress("ab")
    images = env.held_out(regret.STRIDE)
    # Numbered, as ``ab_load.py`` names them: the same checkout twice is an A/A run.
    names = [f"#{i + 1} {c}" for i, c in enumerate(checkouts)]
    with contextlib.ExitStack() as stack:
        envs = {n: {"PYTHONPATH": str(c)} for n, c in zip(names, checkouts, strict=True)}
        # One cache: every server serves the frontier the first (the pins') chose, unless its rule
        # differs.
        cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefit-ab-cache-")))
        pins = {"pins": {"PYTHONPATH": str(checkouts[0])}}
        pin_port = regret.start(stack, env.store, env.workers, env.threads, env.results, pins, cache)["pins"]
        ports = regret.start(stack, env.store, env.workers, env.threads, env.results, envs, cache)
        variants = regret.served(pin_port)
        sweep = regret.pin_sweep(pin_port, [v["name"] for v in variants], images, say)
        plan = regret.Plan.make(sweep, variants, env.workers)
        # Every checkout against the whole store's oracles.
        oracles = {n: plan.oracles["whole"] for n in names}
        rows = regret.side_by_side(ports, images, plan, oracles, say, pin_port)
    for i, budget in enumerate(plan.budgets):
        best = rows[names[0]][i]  # every checkout has the whole store's oracle
        oracle = "none"
        if best["oracle"] is not None:
            oracle = f"{best['oracle']} {100 * best['oracle_accuracy']:.1f} %"
        if best["replayed"] is not None:
            oracle += f", replayed {100 * best['replayed']:.1f} % met {100 * best['replayed_met']:.1f} %"
        line = [f"{budget['ms']:g} ms ({budget['kind']})", f"oracle {oracle}"]
        for name in names:
            row = rows[name][i]
            regret_pt = "" if row["regret_pt"] is None else f" regret {row['regret_pt']:+.1f} pt"
            if row["regret_replayed_pt"] is not None:
                regret_pt += f" ({row['regret_replayed_pt']:+.1f} against the replay)"
            line.append(
                f"{name}: {100 * row['delivered']:.1f} %{regret_pt} met {100 * row['budget_met']:.1f} % "
                f"moved {100 * row['moved']:.0f} %"
            )
        print(" | ".join(line), flush=True)
    kinds = [b["kind"] for b in plan.budgets]
    summaries = {n: regret.summary(rows[n], kinds) for n in names}
    paired = {
        n: statistics.fmean(
            100 * (a["delivered"] - b["delivered"]) for a, b in zip(rows[n], rows[names[0]], strict=True)
        )
        for n in names[1:]
    }
    for n in names:
        print(n, json.dumps(summaries[n]), "" if n not in paired else f"paired {paired[n]:+.2f} pt")
    out = env.results / "ab.json"
    per_budget = {n: [{k: v for k, v in r.items() if k != "runs"} for r in rows[n]] for n in names}
    result = {"budgets": plan.budgets, "rows": per_budget, "summaries": summaries, "paired_pt": paired}
    out.write_text(json.dumps(result, indent=1))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: bench/ab.py BASELINE_CHECKOUT OTHER_CHECKOUT [...]")
    sys.exit(main([Path(a).resolve() for a in sys.argv[1:]]))
