"""Paired load: two (or more) checkouts of the server under the same open-loop load, in turn.

Under load a 10 s run on this kind of machine moves by several points from one run to the next,
so a change is judged by pairs: each round starts a fresh server per checkout, in turn, warms it
with sequential requests at the budget, then offers the same open loop (the held-out images at
``--budget-ms``, ``--rate`` per second for ``--seconds``). Per run: correct answers on time per
offered request (answers with the image's class and ``budget_met``), budget met over answers,
503s, and the server's CPU per offered request, all of it and its event loop's (the main
thread's, from ``/proc``: Linux only). The first checkout is the baseline.

    EDGEFIT_STORE_DIR=model_store/artifacts EDGEFIT_SAMPLE_DIR=../shared/imagenet-sample \\
        .venv/bin/python bench/ab_load.py . ../other-checkout --budget-ms 20 --rate 325 --pairs 4

``EDGEFIT_VARIANTS`` in the environment reaches every server (e.g. the ladder alone). Writes
``bench/results/ab_load.json``; prints a line per run and each checkout's paired difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import client
import regret
import servers

WARMUP = 60  # sequential requests at the budget before each run


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's CPU seconds so far: all its threads', and its main thread's."""
    tick = os.sysconf("SC_CLK_TCK")

    def thread(tid: str) -> float:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += thread(tid)
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total, thread(str(pid))


def run_once(
    checkout: Path, images: regret.Images, args: argparse.Namespace, env: servers.Setup
) -> dict[str, Any]:
    query = f"budget={args.budget_ms:g}ms"
    extra = {"PYTHONPATH": str(checkout)}
    with servers.edgefit(env.store, env.workers, env.threads, env.results, extra_env=extra) as server:
        regret.sequential(server.port, images[:WARMUP], query)
        all_before, main_before = cpu_seconds(server.pid)
        run = client.open_loop(
            regret.HOST, server.port, regret.payloads(images, query), args.rate, args.seconds
        )
        all_after, main_after = cpu_seconds(server.pid)
    row = regret.tally(run)
    offered = row["requests"]
    return {
        **row,
        "correct_on_time_per_offered": row["correct_on_time"] / offered,
        "cpu_ms_per_offered": 1000 * (all_after - all_before) / offered,
        "event_loop_cpu_ms_per_offered": 1000 * (main_after - main_before) / offered,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="the baseline first")
    parser.add_argument("--budget-ms", type=float, default=20.0)
    parser.add_argument("--rate", type=float, required=True, help="requests offered per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    if len(args.checkouts) < 2:
        parser.error("two checkouts at least: the baseline and one to compare")
    env = servers.setup()
    say = servers.progress("ab_load")
    images = env.held_out(regret.STRIDE)
    names = [str(c.resolve()) for c in args.checkouts]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for p in range(args.pairs):
        for name in names:
            say(f"round {p + 1} of {args.pairs}: {name}")
            r = run_once(Path(name), images, args, env)
            runs[name].append(r)
            print(
                f"{name}: correct on time {r['correct_on_time_per_offered']:.1%} of offered, met "
                f"{r['met']} of {r['judged']}, 503 {r['shed_503']}, CPU per offered "
                f"{r['cpu_ms_per_offered']:.2f} ms (event loop {r['event_loop_cpu_ms_per_offered']:.2f} ms)",
                flush=True,
            )
    base = runs[names[0]]
    paired = {}
    for name in names[1:]:
        paired[name] = {
            key: statistics.fmean(r[key] - b[key] for r, b in zip(runs[name], base, strict=True))
            for key in ("correct_on_time_per_offered", "cpu_ms_per_offered", "event_loop_cpu_ms_per_offered")
        }
        d = paired[name]
        print(
            f"{name} − baseline, paired over {args.pairs}: correct on time "
            f"{100 * d['correct_on_time_per_offered']:+.1f} pt, CPU per offered "
            f"{d['cpu_ms_per_offered']:+.2f} ms, event loop {d['event_loop_cpu_ms_per_offered']:+.2f} ms"
        )
    out = env.results / "ab_load.json"
    out.write_text(
        json.dumps(
            {"arguments": {**vars(args), "checkouts": names}, "runs": runs, "paired": paired}, indent=1
        )
    )
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
