"""bench.json -> a markdown report (headlines first) and a plot.

The targets are fixed in advance; they are reported, never tuned to.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import regret

# At 4 and 12 clients, for the headline variant.
TARGET_VS_FLOOR = 0.90
TARGET_VS_INFERENCE = 0.60
TARGET_VS_PEER = 2.5
# At 1 client.
TARGET_OVERHEAD_P50_MS = 0.5
TARGET_DECODE_P50_MS = 1.8
# Sequential requests, idle server; and answers at 2x overload (selection).
TARGET_TIER_MET = {"10": 0.995, "20": 1.0}
TARGET_OVERLOAD_MET = 0.99


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value: Any) -> str:
    return _f(value, "{:.1%}")


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _at_least(value: float | None, target: float) -> bool:
    return value is not None and value >= target


def headlines(r: dict[str, Any]) -> list[str]:
    name = r["config"]["headline"]
    rows, peer = r["overhead"][name], r["peer"]
    floor = r["floor"][name]
    lines = [
        f"## Headlines: {name} pinned, closed-loop keep-alive clients",
        "",
        f"Floor {_f(floor['full']['per_s'])} req/s (decode + preprocess + inference in-process), "
        f"inference alone {_f(floor['infer_only']['per_s'])} req/s; BentoML serves the same file "
        "with the same preprocessing. Targets: at 4 and 12 clients ≥ "
        f"{TARGET_VS_FLOOR:.0%} of the floor, ≥ {TARGET_VS_INFERENCE:.0%} of inference alone, ≥ "
        f"{TARGET_VS_PEER}x BentoML; at 1 client server overhead p50 ≤ {TARGET_OVERHEAD_P50_MS} ms "
        f"and decode + preprocess p50 ≤ {TARGET_DECODE_P50_MS} ms (the server's own timing).",
        "",
        "| clients | req/s | of floor | of inference alone | BentoML req/s | vs BentoML "
        "| overhead p50 ms | overhead p99 ms | decode + preprocess p50 ms | targets |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for conc, row in rows.items():
        if conc == "1":
            ok = (row["overhead_p50_ms"] or math.inf) <= TARGET_OVERHEAD_P50_MS and (
                row["decode_p50_ms"] or math.inf
            ) <= TARGET_DECODE_P50_MS
        else:
            ok = (
                _at_least(row["vs_floor"], TARGET_VS_FLOOR)
                and _at_least(row["vs_inference"], TARGET_VS_INFERENCE)
                and _at_least(row["vs_peer"], TARGET_VS_PEER)
            )
        lines.append(
            f"| {conc} | {_f(row['per_s'])} | {_pct(row['vs_floor'])} | {_pct(row['vs_inference'])} | "
            f"{_f(peer[conc]['per_s'])} | {_f(row['vs_peer'], '{:.2f}x')} | "
            f"{_f(row['overhead_p50_ms'], '{:.3f}')} | {_f(row['overhead_p99_ms'], '{:.3f}')} | "
            f"{_f(row['decode_p50_ms'], '{:.2f}')} | {_mark(ok)} |"
        )
    tiers = r["budget_tiers"]
    met = ", ".join(
        f"{t} ms {_pct(tiers[t]['budget_met'])} ({_mark(_at_least(tiers[t]['budget_met'], goal))})"
        for t, goal in TARGET_TIER_MET.items()
        if t in tiers
    )
    o = r["overload"]
    lines += [
        "",
        f"Budget met, sequential requests on an idle server (targets 10 ms ≥ "
        f"{TARGET_TIER_MET['10']:.1%}, 20 ms {TARGET_TIER_MET['20']:.0%}): {met}.",
        "",
        f"### Overload: {o['budget_ms']} ms budget, {o['rate_per_s']:.1f} req/s offered = 2x "
        f"BentoML's capacity ({o['peer_capacity_per_s']:.1f} req/s) on {o['variant']}",
        "",
        f"{o['variant']} is the most accurate variant whose in-process decode + inference p95 "
        f"alone on this machine meets the budget; BentoML's idle p95 on it over HTTP: "
        f"{_f(o['peer_idle_p95_ms'])} ms. Goodput = answers within budget per second (edgefit: "
        "server clock; BentoML: client clock); accuracy-weighted goodput = the sum of those "
        f"answers' variant top-1, per second. Target: edgefit (selection) ≥ {TARGET_OVERLOAD_MET:.0%} "
        "of answers within budget.",
        "",
        "| system | answered /s | 503 | goodput /s | accuracy-weighted goodput /s | budget met "
        "| served top-1 | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    wall = r["config"]["open_loop_s"]
    for system, row in o["systems"].items():
        met_rate = (
            row["budget_met_server"] if row["budget_met_server"] is not None else row["budget_met_client"]
        )
        target = _mark(_at_least(met_rate, TARGET_OVERLOAD_MET)) if system == "edgefit (selection)" else ""
        lines.append(
            f"| {system} | {_f(row['answered'] / wall)} | {_f(row['shed_503'], '{:.0f}')} | "
            f"{_f(row['goodput_per_s'])} | {_f(row['weighted_goodput_per_s'])} | {_pct(met_rate)} | "
            f"{_f(row['served_top1'], '{:.3f}')} | {target} |"
        )
    lines += [
        "",
        "### Regret against the best pinned variant, budgets on this device's frontier",
        "",
        *regret.headlines(r["regret"]),
    ]
    return lines


def markdown(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    lines = [
        "# edgefit benchmark" + (" (BENCH_QUICK smoke run)" if c["quick"] else ""),
        "",
        f"CPU: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}; Python "
        f"{m['python']}; load average at start {load}. "
        f"Server and floor: {c['workers']} workers x {c['threads']} intra-op threads. "
        f"Medians over {c['repeats']} repeats. Images: {r['images']['count']} real JPEGs "
        f"({r['images']['subset']}, mean {r['images']['mean_bytes'] / 1000:.0f} KB), raw bodies.",
        "",
        *headlines(r),
        "",
        "## Floor: in-process onnxruntime (decode + preprocess + infer + top-k), one loop per worker",
        "",
        "| variant | full req/s | full p50 ms | inference alone req/s | inference p50 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, f in r["floor"].items():
        lines.append(
            f"| {name} | {_f(f['full']['per_s'])} | {_f(f['full']['p50_ms'], '{:.2f}')} | "
            f"{_f(f['infer_only']['per_s'])} | {_f(f['infer_only']['p50_ms'], '{:.2f}')} |"
        )
    lines += [
        "",
        "## Every pinned variant (`model=`), closed-loop keep-alive clients",
        "",
        "| variant | clients | req/s | of floor | of inference alone | client p50 ms | client p99 ms "
        "| overhead p50 ms | overhead p99 ms | decode p50 ms | client CPU (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in r["overhead"].items():
        for conc, row in rows.items():
            lines.append(
                f"| {name} | {conc} | {_f(row['per_s'])} | {_pct(row['vs_floor'])} | "
                f"{_pct(row['vs_inference'])} | "
                f"{_f(row['client_p50_ms'], '{:.2f}')} | {_f(row['client_p99_ms'], '{:.2f}')} | "
                f"{_f(row['overhead_p50_ms'], '{:.3f}')} | {_f(row['overhead_p99_ms'], '{:.3f}')} | "
                f"{_f(row['decode_p50_ms'], '{:.2f}')} | {_f(row['client_cores'], '{:.2f}')} |"
            )
    lines += [
        "",
        "## Budget tiers: sequential requests, the server choosing the variant",
        "",
        "| budget | requests | budget met (server clock) | 503 | overhead p50 ms | served top-1 | variants |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for tier, t in r["budget_tiers"].items():
        mix = ", ".join(f"{k} {v}" for k, v in sorted(t["variants"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {tier} ms | {t['requests']} | {_pct(t['budget_met'])} | {t['shed_503']} | "
            f"{_f(t['overhead_p50_ms'], '{:.3f}')} | {_f(t['served_top1'], '{:.3f}')} | {mix} |"
        )
    lines += [
        "",
        "## Regret against the best pinned variant; under load; mixed budgets (whole store and ladder)",
        "",
        "Plot: regret.png. Mixed budgets: closed-loop clients, each request's budget drawn from "
        "10 / 20 / 50 ms / none; served top-1 = mean manifest top-1 of the variants that answered; "
        "queue p95 from the server's `timing.queue_ms`.",
        "",
        *regret.markdown(r["regret"]),
    ]
    p = r["peer"]
    lines += [
        "",
        f"## Peer: {p['server']} (default serving settings), {p['variant']}, same client, same image bytes",
        "",
        "The peer takes files as multipart/form-data (BentoML's way); edgefit is shown with raw "
        "bodies and with the very same multipart bodies.",
        "",
        "| clients | peer req/s | peer p50 ms | peer p99 ms | edgefit multipart req/s "
        "| edgefit raw / peer | edgefit multipart / peer |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    raw = r["overhead"].get(p["variant"], {})
    for conc in ("1", "4", "12"):
        row, mp = p[conc], r["edgefit_multipart"][conc]
        lines.append(
            f"| {conc} | {_f(row['per_s'])} | {_f(row['client_p50_ms'], '{:.2f}')} | "
            f"{_f(row['client_p99_ms'], '{:.2f}')} | {_f(mp['per_s'])} | "
            f"{_f(raw.get(conc, {}).get('vs_peer'), '{:.2f}x')} | {_f(mp['vs_peer'], '{:.2f}x')} |"
        )
    o = r["overload"]
    lines += [
        "",
        f"## Overload in detail: open loop at {o['rate_per_s']:.1f} req/s, budget {o['budget_ms']} ms",
        "",
        "Idle in-process p95 (decode + inference) of the variants tried, most accurate first: "
        + ", ".join(f"{n} {ms:.1f} ms" for n, ms in o["idle_p95_ms_in_process"].items())
        + ". Budget met is by the server's clock where the server reports one (edgefit), and by "
        "the client's for both; 503s are counted apart.",
        "",
        "| system | offered | answered | 503 | goodput /s | weighted goodput /s | budget met (server) "
        "| budget met (client) | served top-1 | client p50 ms | client p99 ms | client CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in o["systems"].items():
        lines.append(
            f"| {name} | {_f(s['offered'], '{:.0f}')} | {_f(s['answered'], '{:.0f}')} | "
            f"{_f(s['shed_503'], '{:.0f}')} | {_f(s['goodput_per_s'])} | "
            f"{_f(s['weighted_goodput_per_s'])} | "
            f"{_pct(s['budget_met_server'])} | {_pct(s['budget_met_client'])} | "
            f"{_f(s['served_top1'], '{:.3f}')} | {_f(s['client_p50_ms'])} | "
            f"{_f(s['client_p99_ms'])} | {_f(s['client_cores'], '{:.2f}')} |"
        )
    if "profile" in r:
        lines += _profile(r["profile"])
    lines += [
        "",
        f"Whole run: {r['elapsed_s']:.0f} s. Command: `make bench`"
        + (" with `BENCH_QUICK=1`" if c["quick"] else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def _profile(p: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Profile: edgefit {p['variant']}, {p['clients']} closed-loop clients, py-spy at "
        f"{p['rate_hz']} Hz for {p['seconds']:.0f} s",
        "",
        "Busy = the share of samples in which py-spy found the thread active (running, or "
        "waiting for the GIL), per thread; functions are where those samples were (self).",
        "",
        "| threads | busy per thread | where (share of that group's samples) |",
        "| --- | ---: | --- |",
    ]
    for name, g in sorted(p["groups"].items(), key=lambda kv: -kv[1]["samples"]):
        where = "; ".join(f"{f['function']} {f['share']:.0%}" for f in g["self"][:6])
        lines.append(f"| {name} x{g['threads']} | {g['busy_per_thread']:.0%} | {where} |")
    return lines


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    conc = ["1", "4", "12"]
    for name, rows in r["overhead"].items():
        left.plot([int(c) for c in conc], [rows[c]["per_s"] for c in conc], "o-", label=f"edgefit {name}")
        left.axhline(
            r["floor"][name]["full"]["per_s"],
            linestyle="--",
            linewidth=1,
            color=left.lines[-1].get_color(),
            label=f"floor {name}",
        )
    p = r["peer"]
    left.plot(
        [int(c) for c in conc],
        [p[c]["per_s"] for c in conc],
        "s-",
        color="black",
        label=f"{p['server']} {p['variant']}",
    )
    left.set_xlabel("closed-loop clients")
    left.set_ylabel("requests / s")
    left.set_xticks([1, 4, 12])
    left.set_title("Throughput vs the floor and the peer")
    left.legend(fontsize=7)

    systems = r["overload"]["systems"]
    names = list(systems)
    bars = right.bar(range(len(names)), [systems[n]["goodput_per_s"] for n in names], 0.6)
    for bar, n in zip(bars, names, strict=True):
        met = systems[n]["budget_met_server"] or systems[n]["budget_met_client"]
        label = "–" if met is None else f"{met:.0%} met"
        right.annotate(
            label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    right.axhline(r["overload"]["rate_per_s"], linestyle="--", color="grey", label="offered")
    right.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    right.set_ylabel("answers within budget / s (goodput)")
    right.set_title(
        f"Overload at {r['overload']['rate_per_s']:.0f} req/s offered, budget {r['overload']['budget_ms']} ms"
    )
    right.legend(fontsize=7)
    m = r["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
