"""``make soak``: a long run at ~70 % of capacity with mixed budgets and reloads under load.

Starts one ``edgefit serve`` on the store, measures its capacity (closed loop, mixed budgets),
then offers 70 % of it as an open loop for ``SOAK_SECONDS`` (default 600) with budgets drawn
from 10 / 20 / 50 ms / none, while ``SOAK_RELOADS`` (default 50) ``POST /admin/reload`` calls are
spread over the run. The server serves a copy of the store, and every reload changes it: the
reloads alternately drop and restore the variant with the largest file of its own, so each one
frees or opens a session, as a store update does (a reload of an unchanged store opens nothing).
The server's RSS is sampled every second from ``/proc``.

Faults: ``SOAK_KILLS`` (default 5) times, spread over the run, the server is killed with SIGKILL
and started again at once with the same command, port and latency cache, as an orchestrator
restarts a container. Requests falling due while it is down are not sent (a load balancer routes
none to an instance that is not ready; counted as held back), and reloads wait for it. Reported
per kill: the requests in flight at it (the only ones allowed to fail) and the time from the new
start to ready (limit ``SOAK_READY_LIMIT_S``, default 5).

Reports errors (transport errors, 5xx), 503s shed, the kills, budget met per tier (the server's own
``budget_met``), RSS at ready / warm (after the capacity probe: traffic's working set in place)
/ at the end / its maximum, and the reloads (failed, duration). Writes ``bench/results/soak.json``
and ``bench/results/soak.md``. Exit status 1 if more requests failed than were in flight at the
kills, any reload failed (other than one a kill cut short), a restart was not ready in time, RSS at
ready or at the end passed ``SOAK_RSS_LIMIT_MB`` (default 400), or the run and its reloads grew
RSS from warm by ``SOAK_GROWTH_LIMIT_MB`` (default 20) or more. The maximum is reported, not
judged: a reload that changes files holds two sets of sessions for a moment.

Environment: SOAK_SECONDS, SOAK_RELOADS, SOAK_KILLS, SOAK_LOAD (fraction of capacity, default
0.7), SOAK_RSS_LIMIT_MB, SOAK_GROWTH_LIMIT_MB, SOAK_READY_LIMIT_S, EDGEFIT_STORE_DIR,
EDGEFIT_SAMPLE_DIR, BENCH_WORKERS, BENCH_THREADS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import client
import mixed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler(threading.Thread):
    """The RSS of the server every second, whichever process it is now (it may be restarted)."""

    def __init__(self, server: Any) -> None:
        super().__init__(daemon=True)
        self.server, self.samples, self.stop = server, [rss_mb(server.pid)], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(OSError, RuntimeError):  # killed a moment ago
                self.samples.append(rss_mb(self.server.pid))


class ChangingStore:
    """A copy of a store whose manifest alternately lacks and has again ``toggled``: the variant
    with the largest file no other variant shares, so each reload frees or opens one session."""

    def __init__(self, source: Path, root: Path) -> None:
        self.root = root
        shutil.copytree(source, root)
        self.full = json.loads((root / "manifest.json").read_text())
        files = [v["file"] for v in self.full["variants"]]
        own = [v for v in self.full["variants"] if files.count(v["file"]) == 1]
        self.toggled = max(own, key=lambda v: (root / v["file"]).stat().st_size)

    def change(self, i: int) -> None:
        manifest = dict(self.full)
        if i % 2 == 0:
            manifest["variants"] = [v for v in self.full["variants"] if v is not self.toggled]
        staged = self.root / "manifest.json.new"
        staged.write_text(json.dumps(manifest, indent=2))
        staged.replace(self.root / "manifest.json")


def reload_under_load(
    port: int,
    store: ChangingStore,
    count: int,
    seconds: float,
    results: list[dict[str, Any]],
    gate: client.Gate,
) -> None:
    """``count`` reloads spread over ``seconds`` (back to back if a reload takes longer), each
    after changing the store; while the server is down (``gate``) they wait for it."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + (i + 0.5) * seconds / count - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        while not gate.up:
            time.sleep(0.05)
        store.change(i)
        began = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            status = 0
            print(f"reload {i}: {exc}", file=sys.stderr)
        killed = status == 0 and not gate.up  # cut short by a kill: the orchestrator's doing
        results.append({"status": status, "seconds": round(time.perf_counter() - began, 3), "killed": killed})


def kill_under_load(
    server: Any, gate: client.Gate, count: int, seconds: float, results: list[dict[str, Any]]
) -> None:
    """``count`` SIGKILLs spread over ``seconds``, each followed at once by a new start."""
    start = time.perf_counter()
    for k in range(count):
        delay = start + (k + 0.5) * seconds / count - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        in_flight = gate.close()
        server.kill()
        ready_s = server.start()
        rss_ready = rss_mb(server.pid)  # before traffic reaches it, as the first start's
        gate.open()
        results.append(
            {"in_flight": in_flight, "ready_s": round(ready_s, 2), "rss_ready_mb": round(rss_ready, 1)}
        )
        print(f"kill {k + 1}: {in_flight} requests in flight; ready again in {ready_s:.2f} s")


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import servers

    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    reloads = int(os.environ.get("SOAK_RELOADS", "50"))
    kills = int(os.environ.get("SOAK_KILLS", "5"))
    ready_limit = float(os.environ.get("SOAK_READY_LIMIT_S", "5"))
    load = float(os.environ.get("SOAK_LOAD", "0.7"))
    rss_limit = float(os.environ.get("SOAK_RSS_LIMIT_MB", "400"))
    growth_limit = float(os.environ.get("SOAK_GROWTH_LIMIT_MB", "20"))
    env = servers.setup()
    drawn = mixed.payloads([(image, None) for image in env.jpegs(20)])
    out_dir = env.results
    copy = tempfile.TemporaryDirectory(prefix="edgefit-soak-store-")
    store = ChangingStore(env.store, Path(copy.name) / "store")
    print(f"reloads alternately drop and restore {store.toggled['name']} ({store.toggled['file']})")
    with copy, servers.edgefit(store.root, env.workers, env.threads, out_dir) as server:
        rss = RssSampler(server)
        rss_ready = rss.samples[0]
        rss.start()
        probe = client.closed_loop("127.0.0.1", server.port, drawn, 2 * env.workers, 15.0)
        # Traffic's own working set (each worker's intermediate tensors, allocator caches) is in
        # place after the probe: what the run and its reloads add is measured from here.
        rss_warm = rss_mb(server.pid)
        capacity = sum(1 for s in probe.samples if s.status == 200) / probe.wall_s
        rate = load * capacity
        print(
            f"capacity {capacity:.1f}/s; offering {rate:.1f}/s for {seconds:.0f} s with {reloads} reloads "
            f"and {kills} kills"
        )
        gate = client.Gate()
        reload_results: list[dict[str, Any]] = []
        kill_results: list[dict[str, Any]] = []
        reloader = threading.Thread(
            target=reload_under_load, args=(server.port, store, reloads, seconds, reload_results, gate)
        )
        killer = threading.Thread(target=kill_under_load, args=(server, gate, kills, seconds, kill_results))
        reloader.start()
        killer.start()
        run = client.open_loop("127.0.0.1", server.port, drawn, rate, seconds, gate=gate)
        reloader.join()
        killer.join()
        # What is left once the load is over: the last requests done, the old sessions released.
        time.sleep(10)
        rss.stop.set()
        rss.join()
        rss_end = rss_mb(server.pid)
    served = mixed.summary(run)
    failed = [s for s in run.samples if s.status >= 500 and s.status != 503]
    reload_seconds = [r["seconds"] for r in reload_results]
    in_flight_at_kills = sum(k["in_flight"] for k in kill_results)
    ready_times = [k["ready_s"] for k in kill_results]
    report: dict[str, Any] = {
        "seconds": seconds,
        "capacity_per_s": round(capacity, 2),
        "offered_per_s": round(rate, 2),
        "requests": len(run.samples) + len(run.errors),
        "transport_errors": len(run.errors),
        "transport_error_examples": run.errors[:5],
        "server_errors_5xx": len(failed),
        "shed_503": sum(1 for s in run.samples if s.status == 503),
        "late_sends_p95_ms": statistics.quantiles([s.late_ms for s in run.samples], n=20)[-1]
        if len(run.samples) > 1
        else None,
        "tiers": {tier: served[tier] for tier in mixed.TIERS},
        "rss_mb": {
            "ready": round(rss_ready, 1),
            "end": round(rss_end, 1),
            "warm": round(rss_warm, 1),
            "max": round(max(rss.samples), 1),
            "growth": round(rss_end - rss_warm, 1),
        },
        "reloads": {
            "done": len(reload_results),
            "toggled_variant": store.toggled["name"],
            "failed": sum(1 for r in reload_results if r["status"] != 200 and not r["killed"]),
            "cut_short_by_a_kill": sum(1 for r in reload_results if r["killed"]),
            "seconds_median": statistics.median(reload_seconds) if reload_seconds else None,
            "seconds_max": max(reload_seconds) if reload_seconds else None,
        },
        "kills": {
            "done": len(kill_results),
            "in_flight": [k["in_flight"] for k in kill_results],
            "ready_s": ready_times,
            "rss_ready_mb": [k["rss_ready_mb"] for k in kill_results],
            "held_back_while_down": gate.held_back,
            # A kill costs the requests on the wire a transport error; a 5xx is never a kill's.
            "failed_beyond_in_flight": max(0, len(run.errors) - in_flight_at_kills) + len(failed),
        },
        "workers": env.workers,
        "threads": env.threads,
        "load_average_at_end": os.getloadavg(),
    }
    (out_dir / "soak.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Soak: {seconds:.0f} s at {load:.0%} of capacity ({rate:.1f}/s of {capacity:.1f}/s), "
        f"{len(reload_results)} reloads",
        "",
        f"- requests {report['requests']}, transport errors {report['transport_errors']}, "
        f"5xx {report['server_errors_5xx']}, 503 shed {report['shed_503']}",
        f"- RSS MB: ready {report['rss_mb']['ready']}, warm {report['rss_mb']['warm']} (after the "
        f"capacity probe), end {report['rss_mb']['end']} (growth from warm {report['rss_mb']['growth']}, "
        f"limit {growth_limit:g}), max {report['rss_mb']['max']} (limit {rss_limit:g} at ready and end)",
        f"- reloads: {report['reloads']['done']} done (alternately dropping and restoring "
        f"{report['reloads']['toggled_variant']}), {report['reloads']['failed']} failed, "
        f"{report['reloads']['cut_short_by_a_kill']} cut short by a kill, "
        f"median {report['reloads']['seconds_median']} s, max {report['reloads']['seconds_max']} s",
        f"- kills (SIGKILL, restarted at once): {len(kill_results)}; requests in flight at each "
        f"{report['kills']['in_flight']}, failed beyond those {report['kills']['failed_beyond_in_flight']}; "
        f"ready again after {ready_times} s (limit {ready_limit:g}); RSS at those readies "
        f"{report['kills']['rss_ready_mb']} MB; {gate.held_back} requests held back while down",
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in report['load_average_at_end'])}",
        "",
        "| tier | requests | answered | 503 | budget met (server) | total p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tier in mixed.TIERS:
        t = served[tier]
        met = "–" if t["budget_met"] is None else f"{t['budget_met']:.1%}"
        p99 = "–" if t["total_p99_ms"] is None else f"{t['total_p99_ms']:.1f}"
        lines.append(f"| {tier} | {t['requests']} | {t['answered']} | {t['shed_503']} | {met} | {p99} |")
    (out_dir / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = (
        report["kills"]["failed_beyond_in_flight"] == 0
        and all(t <= ready_limit for t in ready_times)
        and report["reloads"]["failed"] == 0
        and max(rss_ready, rss_end) <= rss_limit
        and rss_end - rss_warm < growth_limit
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
