"""The default store is a pool: a real server on it serves this device's frontier, measured here,
and plans confidence cascades among it.

The first start chooses (every candidate profiled, int8 variants re-checked on the store's
reference set); a restart with the cache opens only what it serves.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.app.test_device_frontier import assert_served_is_the_measured_frontier
from tests.conftest import start_server


def test_the_default_store_serves_this_devices_measured_frontier(store_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    started = time.monotonic()
    first = start_server(store_dir, tmp_path, frontier="true", cache_dir=str(cache), profile_runs="20")
    try:
        chose_in = time.monotonic() - started
        pool = {
            v["name"]: v for v in httpx.get(f"{first.url}/models", params={"pool": "true"}).json()["variants"]
        }
        plans = httpx.get(f"{first.url}/models").json()["cascades"]
    finally:
        first.stop()
    served = sorted(n for n, v in pool.items() if v["served"])
    left = {n: (v["reason"], v["detail"]) for n, v in pool.items() if not v["served"]}
    print(f"chosen in {chose_in:.1f} s: serving {', '.join(served)}")
    for name, why in sorted(left.items()):
        print(f"  not served: {name}: {why[0]}: {why[1]}")
    assert_served_is_the_measured_frontier(pool)
    assert len(served) >= 2 and left, (
        "a pool of full networks, int8 twins and subnets has dominated candidates"
    )
    # The store's int8 variants were re-checked here on its reference set.
    assert "int8 check: " in first.log.read_text()
    # Cascades planned here, among what is served here, from the store's recorded answers.
    print("cascade plans:", ", ".join(p["name"] for p in plans))
    assert plans and all({p["small"], p["big"]} <= set(served) for p in plans)
    assert all(0 < p["escalation_rate"] < 1 and p["planned_cost_ms"] > 0 for p in plans)

    started = time.monotonic()
    again = start_server(store_dir, tmp_path, frontier="true", cache_dir=str(cache))
    try:
        restarted_in = time.monotonic() - started
        listed = sorted(v["name"] for v in httpx.get(f"{again.url}/models").json()["variants"])
    finally:
        again.stop()
    print(f"restarted with the cache in {restarted_in:.1f} s")
    assert listed == served
    log = again.log.read_text()
    assert "this device's frontier of the pool reused from the cache" in log
    assert f"verified {len(served)} variants" in log and "latency of every variant reused" in log
