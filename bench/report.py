"""bench.json -> a markdown table and a plot.

The targets are issue 5's; they are reported, never tuned to.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import delivered
import mixed

TARGET_VS_FLOOR = 0.85
TARGET_OVERHEAD_P50_MS = 1.0
TARGET_GOODPUT_VS_PEER = 3.0
TARGET_BUDGET_MET = 0.95


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value: Any) -> str:
    return _f(value, "{:.1%}")


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


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
        "## Overhead: edgefit, pinned variant (`model=`), closed-loop keep-alive clients",
        "",
        f"Targets: ≥ {TARGET_VS_FLOOR:.0%} of the floor's req/s; server overhead "
        f"(total − decode − inference − queue) p50 ≤ {TARGET_OVERHEAD_P50_MS} ms. "
        f"The floor runs {c['workers']} loops in parallel, which one client cannot match, so the "
        "targets are judged at 4 and 12 clients.",
        "",
        "| variant | clients | req/s | of floor | client p50 ms | client p99 ms | overhead p50 ms "
        "| overhead p99 ms | client CPU (cores) | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, rows in r["overhead"].items():
        for conc, row in rows.items():
            ok = (
                row["vs_floor"] >= TARGET_VS_FLOOR and (row["overhead_p50_ms"] or 0) <= TARGET_OVERHEAD_P50_MS
            )
            lines.append(
                f"| {name} | {conc} | {_f(row['per_s'])} | {_pct(row['vs_floor'])} | "
                f"{_f(row['client_p50_ms'], '{:.2f}')} | {_f(row['client_p99_ms'], '{:.2f}')} | "
                f"{_f(row['overhead_p50_ms'], '{:.3f}')} | "
                f"{_f(row['overhead_p99_ms'], '{:.3f}')} | "
                f"{_f(row['client_cores'], '{:.2f}')} | {_mark(ok) if conc != '1' else ''} |"
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
        "## Mixed budgets: closed-loop clients, each request's budget drawn from 10 / 20 / 50 ms / none",
        "",
        "Budget met by the server's clock over answered requests; served top-1 = mean manifest "
        "top-1 of the variants that answered; queue p95 from the server's `timing.queue_ms`.",
        "",
        *mixed.markdown(r["mixed_budgets"]),
        "",
        "## Delivered accuracy: the specialised store against its resolution-only ladder",
        "",
        *delivered.markdown(r["delivered"]),
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
    for conc in ("1", "4", "12"):
        row, mp = p[conc], r["edgefit_multipart"][conc]
        lines.append(
            f"| {conc} | {_f(row['per_s'])} | {_f(row['client_p50_ms'], '{:.2f}')} | "
            f"{_f(row['client_p99_ms'], '{:.2f}')} | {_f(mp['per_s'])} | "
            f"{_f(row['edgefit_raw_over_peer'], '{:.2f}x')} | "
            f"{_f(row['edgefit_multipart_over_peer'], '{:.2f}x')} |"
        )
    o = r["overload"]
    systems = o["systems"]
    peer_name = next(k for k in systems if k.startswith("BentoML"))
    peer_goodput = systems[peer_name]["goodput_per_s"]
    lines += [
        "",
        f"## Overload: open loop at {o['rate_per_s']:.1f} req/s = 2x the floor of "
        f"{o['capacity_variant']}, budget {o['budget_ms']} ms",
        "",
        f"Targets: edgefit's goodput ≥ {TARGET_GOODPUT_VS_PEER:.0f}x the peer's and budget met ≥ "
        f"{TARGET_BUDGET_MET:.0%}. Budget met is by the server's clock over answered requests "
        "where the server reports one (edgefit); the peer has none, so its figures use the "
        "client's clock (edgefit's client-clock rate is shown too). 503s are counted apart.",
        "",
        "| system | offered | answered | 503 | goodput /s | goodput vs peer | budget met (server) "
        "| budget met (client) | served top-1 | client p50 ms | client p99 ms | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, s in systems.items():
        # A peer with no answer within budget makes any goodput of ours an infinite ratio.
        ratio = s["goodput_per_s"] / peer_goodput if peer_goodput else math.inf
        shown = (
            "∞"
            if math.isinf(ratio) and s["goodput_per_s"]
            else _f(None if math.isinf(ratio) else ratio, "{:.2f}x")
        )
        target = ""
        if name == "edgefit (selection)":
            ok = ratio >= TARGET_GOODPUT_VS_PEER and (s["budget_met_server"] or 0) >= TARGET_BUDGET_MET
            target = _mark(ok)
        lines.append(
            f"| {name} | {_f(s['offered'], '{:.0f}')} | {_f(s['answered'], '{:.0f}')} | "
            f"{_f(s['shed_503'], '{:.0f}')} | {_f(s['goodput_per_s'])} | "
            f"{shown} | "
            f"{_pct(s['budget_met_server'])} | {_pct(s['budget_met_client'])} | "
            f"{_f(s['served_top1'], '{:.3f}')} | {_f(s['client_p50_ms'])} | "
            f"{_f(s['client_p99_ms'])} | {target} |"
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
