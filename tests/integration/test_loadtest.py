"""The Locust load test, headless and short, against a real ``edgefit serve`` on loopback.

It runs through ``loadtest/run.sh``, the entry point of ``make loadtest``, so what passes here is
what a developer runs. A second, shorter run sets an impossible threshold and must fail: the
gate that decides the exit code is itself under test.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, start_server

pytestmark = pytest.mark.integration

# A few variants, fast and slow enough for the budget tiers to mean something, plus the store's
# fastest full-depth int8 variant; few profile runs keep the start-up short. lite0-128-fp32 is the
# one that makes 10 ms reachable on a CPU without int8 dot-product instructions (the CI failure of
# 2026-11-28: 10 ms met 0 % without it).
LADDER = ("lite0-128-fp32", "lite0-160-fp32", "lite0-192-fp32", "lite0-224-fp32")
RUN_SECONDS = 25
# The locustfile's steady thresholds state the service level for a quiet machine (`make
# loadtest`): 10 / 20 / 50 ms met 97 / 99 / 99 % of the time. Here the run shares a small,
# possibly busy CI machine, so the tiers are gated loosely: enough to fail a server that ignores
# budgets or serves the queue first come, first served, without failing on a noisy neighbour.
# 10 ms is reported, not gated: on CPUs without int8 dot-product instructions (AMD EPYC, no
# VNNI) the fastest variant alone takes 8-10 ms idle (decode 2.5 + lite0-128-fp32 5.4-7 ms), and
# this test measured 19 % met there on a quiet machine (2026-11-28). The strict tier mostly
# sheds there and answers few (9 of 81 in that run, 6 met; 2 of 75, both late, in CI's run of
# 2026-11-28): a single inference that runs 2-3x its profile, which these shared machines do,
# swings it by tens of points, so CI asks only that most strict answers are on time, and, as
# every tier, misses only when the count shows it (loadtest/verdict.py). The failure ratio keeps
# the file's own limit.
CI_THRESHOLDS = {
    "min_budget_met": {"10ms": 0.0, "20ms": 0.5, "50ms": 0.95, "20ms+max_size": 0.3, "20ms strict": 0.5}
}


@pytest.fixture(scope="module")
def variants(fast_int8: str) -> list[str]:
    return [*LADDER, fast_int8]


@pytest.fixture(scope="module")
def server(store_dir: Path, tmp_path_factory: pytest.TempPathFactory, variants: list[str]) -> Iterator[str]:
    s = start_server(
        store_dir,
        tmp_path_factory.mktemp("edgefit"),
        variants=",".join(variants),
        profile_runs="5",
        log_level="WARNING",
    )
    yield s.url
    assert s.stop() == 0


def _loadtest(
    url: str, sample_dir: Path, results: Path, seconds: int, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGEFIT_URL": url,
        "EDGEFIT_SAMPLE_DIR": str(sample_dir),
        "LOADTEST_RESULTS_DIR": str(results),
        "LOADTEST_DURATION": str(seconds),
        "LOCUST": str(Path(sys.executable).parent / "locust"),
        **extra,
    }
    return subprocess.run(
        ["bash", str(REPO / "loadtest" / "run.sh"), "--shape", "steady"],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=REPO,
    )


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def test_steady_load_meets_the_thresholds(
    server: str, tmp_path: Path, sample_dir: Path, variants: list[str]
) -> None:
    run = _loadtest(server, sample_dir, tmp_path, RUN_SECONDS, LOADTEST_THRESHOLDS=json.dumps(CI_THRESHOLDS))
    summary_path = tmp_path / "steady-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if run.returncode != 0:
        pytest.fail(
            f"missed: {summary.get('missed')}\n{json.dumps(_diagnosis(server, summary), indent=1)}\n"
            f"{run.stderr[-2000:]}"
        )

    rows = _rows(tmp_path / "steady_stats.csv")
    posts = {name: row for (kind, name), row in rows.items() if kind == "POST"}
    # At 2 users pacing 10 requests/s each, 25 s makes ~500 requests; far fewer means stalls.
    made = sum(int(r["Request Count"]) for r in posts.values())
    assert made >= 200, posts
    assert sum(int(r["Failure Count"]) for r in posts.values()) == 0, posts
    for tier in ("10ms", "20ms", "50ms"):
        budget = rows[("BUDGET", tier)]
        assert int(budget["Request Count"]) > 0
    served = {name for kind, name in rows if kind == "VARIANT"}
    assert served and served <= set(variants)
    assert ("SERVER", "overhead_ms") in rows
    assert (tmp_path / "steady.html").stat().st_size > 0

    assert summary["missed"] == []


def _diagnosis(server: str, summary: dict[str, Any]) -> dict[str, Any]:
    """What a failed run needs to be understood from CI's log alone: each tier's answers and
    variant mix, and the latency table the server selected with."""
    models = httpx.get(f"{server}/models", timeout=10).json()["variants"]
    return {
        "tiers": {
            name: {k: t[k] for k in ("answered", "budget_met", "shed_503", "failures", "variants")}
            for name, t in summary.get("tiers", {}).items()
        },
        "latency_ms": {m["name"]: m["latency_ms"] for m in models},
    }


def test_a_missed_threshold_fails_the_run(server: str, tmp_path: Path, sample_dir: Path) -> None:
    run = _loadtest(
        server, sample_dir, tmp_path, 6, LOADTEST_THRESHOLDS=json.dumps({"min_budget_met": {"50ms": 1.01}})
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads((tmp_path / "steady-summary.json").read_text())
    assert any(line.startswith("tier 50ms:") for line in summary["missed"]), summary
