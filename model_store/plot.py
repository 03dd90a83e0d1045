"""The accuracy / latency frontier of a store on this machine, as a picture."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    name: str
    latency_ms: float
    top1: float
    precision: str
    subnet: bool  # cut from its family's network with blocks skipped; else the resolution ladder


_LADDER = "tab:blue"
_SUBNET = "tab:red"


def frontier(points: list[Point]) -> set[str]:
    """Names of the points no other point beats on both latency and accuracy."""
    return {
        p.name
        for p in points
        if not any(
            q.latency_ms <= p.latency_ms
            and q.top1 >= p.top1
            and (q.latency_ms < p.latency_ms or q.top1 > p.top1)
            for q in points
        )
    }


def plot_frontier(points: list[Point], title: str, out: Path) -> None:
    """Write a PNG or SVG (by ``out``'s suffix): the resolution ladder and the subnets in two
    colours, fp32 round and int8 square; the frontier joined, dominated points faded."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = frontier(points)
    fig, ax = plt.subplots(figsize=(9, 6))
    for p in points:
        on = p.name in best
        ax.scatter(
            p.latency_ms,
            100 * p.top1,
            marker="o" if p.precision == "fp32" else "s",
            color=_SUBNET if p.subnet else _LADDER,
            alpha=1.0 if on else 0.3,
            edgecolors="black" if on else "none",
            zorder=3,
        )
        ax.annotate(
            p.name,
            (p.latency_ms, 100 * p.top1),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color="black" if on else "grey",
        )
    line = sorted((p for p in points if p.name in best), key=lambda p: p.latency_ms)
    ax.step(
        [p.latency_ms for p in line],
        [100 * p.top1 for p in line],
        where="post",
        color="tab:green",
        label="frontier (not dominated)",
    )
    ax.scatter([], [], marker="o", color=_LADDER, label="resolution ladder (full depth)")
    ax.scatter([], [], marker="o", color=_SUBNET, label="specialised subnets (blocks skipped)")
    ax.scatter([], [], marker="o", color="grey", label="fp32")
    ax.scatter([], [], marker="s", color="grey", label="int8")
    ax.scatter([], [], marker="o", color="grey", alpha=0.3, label="dominated")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("inference latency p50 on this machine (ms, log scale)")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
