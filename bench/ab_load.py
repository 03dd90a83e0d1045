"""Paired load: two (or more) checkouts of the server under the same load, in turn.

Under load a 10 s run on this kind of machine moves by several points from one run to the next, so
a change is judged by pairs: each round starts a fresh server per checkout, in turn, and offers it
the same load on the held-out images. All of them share one cache: they serve the frontier the
first one chose (a frontier rule that differs keys its own choice). The load is either an open loop
(``--rate`` requests per second at ``--budget-ms`` for ``--seconds``, after sequential warm-ups at
that budget) or, with ``--mixed``, the mixed-budget closed loops of ``bench/mixed.py`` (3 and 6
clients, ``--seconds`` each). Per run, open loop: correct answers on time per offered request
(answers with the image's class and ``budget_met``), budget met over answers and 503s; mixed: each
client count's and tier's delivered accuracy and budget met. Both: the server's CPU per request,
all of it and its event loop's (the main thread's, from ``/proc``: Linux only). The first checkout
is the baseline; every figure gets its mean paired difference.

    EDGEFIT_STORE_DIR=model_store/artifacts EDGEFIT_SAMPLE_DIR=../shared/imagenet-sample \\
        .venv/bin/python bench/ab_load.py . ../other-checkout --budget-ms 20 --rate 325 --pairs 4
    ... bench/ab_load.py . ../other-checkout --mixed --pairs 2

``EDGEFIT_VARIANTS`` in the environment reaches every server (e.g. the ladder alone). Writes
``bench/results/ab_load.json``; prints a line per run and the paired differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import client
import mixed
import regret
import servers

WARMUP = 60  # sequential requests at the budget before each open-loop run


def open_loop(port: int, images: regret.Images, args: argparse.Namespace) -> tuple[dict[str, float], int]:
    """The open loop's figures, and how many requests it offered; prints which variants answered."""
    query = f"budget={args.budget_ms:g}ms"
    row = regret.tally(
        client.open_loop(regret.HOST, port, regret.payloads(images, query), args.rate, args.seconds)
    )
    figures = {
        "correct on time per offered %": 100 * row["correct_on_time"] / row["requests"],
        "budget met %": 100 * row["met"] / row["judged"] if row["judged"] else 0.0,
        "503": row["shed_503"],
    }
    print(f"  variants: {regret.mix(row['variants'])}", flush=True)
    return figures, row["requests"]


def mixed_budgets(port: int, images: regret.Images, args: argparse.Namespace) -> tuple[dict[str, float], int]:
    """Each client count's and tier's delivered accuracy and budget met, and how many requests ran."""
    measured = mixed.measure(port, images, args.seconds, 1)
    figures = {}
    for clients, run in measured.items():
        for tier in mixed.TIERS:
            t = run[tier]
            if t["delivered_accuracy"] is not None:
                figures[f"{clients} clients {tier} delivered %"] = 100 * t["delivered_accuracy"]
            if t["budget_met"] is not None:
                figures[f"{clients} clients {tier} met %"] = 100 * t["budget_met"]
    return figures, sum(run["requests"] for run in measured.values())


def run_once(
    checkout: Path, images: regret.Images, args: argparse.Namespace, env: servers.Setup, cache: Path
) -> dict[str, float]:
    load = mixed_budgets if args.mixed else open_loop
    extra = {"PYTHONPATH": str(checkout)}
    with servers.edgefit(
        env.store, env.workers, env.threads, env.results, extra_env=extra, cache_dir=cache
    ) as server:
        if not args.mixed:  # (mixed budgets warm up inside, for a second, counted in the CPU)
            regret.sequential(server.port, images[:WARMUP], f"budget={args.budget_ms:g}ms")
        all_before, main_before = servers.cpu_seconds(server.pid), servers.cpu_seconds(server.pid, server.pid)
        figures, requests = load(server.port, images, args)
        all_after, main_after = servers.cpu_seconds(server.pid), servers.cpu_seconds(server.pid, server.pid)
    return {
        **figures,
        "CPU ms per request": 1000 * (all_after - all_before) / requests,
        "event loop CPU ms per request": 1000 * (main_after - main_before) / requests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="the baseline first")
    parser.add_argument("--mixed", action="store_true", help="mixed budgets instead of an open loop")
    parser.add_argument("--budget-ms", type=float, default=20.0)
    parser.add_argument("--rate", type=float, help="requests offered per second (open loop)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    if len(args.checkouts) < 2:
        parser.error("two checkouts at least: the baseline and one to compare")
    if not args.mixed and args.rate is None:
        parser.error("an open loop needs --rate")
    env = servers.setup()
    say = servers.progress("ab_load")
    images = env.held_out(regret.STRIDE)
    names = [str(c.resolve()) for c in args.checkouts]  # the same one twice: an A/A run
    runs: list[list[dict[str, float]]] = [[] for _ in names]
    # One cache for every server of the run: all serve the frontier the first one chose.
    with tempfile.TemporaryDirectory(prefix="edgefit-ab-cache-") as cache:
        for p in range(args.pairs):
            for i, name in enumerate(names):
                say(f"round {p + 1} of {args.pairs}: #{i + 1} {name}")
                runs[i].append(run_once(Path(name), images, args, env, Path(cache)))
                figures = ", ".join(f"{k} {v:.2f}" for k, v in runs[i][-1].items())
                print(f"#{i + 1} {name}: {figures}", flush=True)
    base = runs[0]
    paired = [
        {
            key: statistics.fmean(r[key] - b[key] for r, b in zip(mine, base, strict=True))
            for key in base[0]
            if all(key in r for r in mine + base)
        }
        for mine in runs[1:]
    ]
    for i, diffs in enumerate(paired, start=2):
        print(f"#{i} − #1, paired over {args.pairs}: " + ", ".join(f"{k} {v:+.2f}" for k, v in diffs.items()))
    out = env.results / "ab_load.json"
    result = {"arguments": {**vars(args), "checkouts": names}, "runs": runs, "paired_against_first": paired}
    out.write_text(json.dumps(result, indent=1))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
