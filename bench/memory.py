"""Where a server's memory goes, and what each onnxruntime / allocator choice costs in latency.

For each configuration, a fresh process loads every variant of the store as the server does
(``Store.verify`` bytes, ``open_session``, the runner's session options plus the choice under
test, ``release_free_memory`` after each load), then runs
mixed traffic on 2 threads (random variants, each inference timed), then rebuilds every session
``RELOADS`` times as a reload does. It reports RSS after loading, after the traffic, its peak,
RSS growth per reload, and the median inference time over all variants.

    .venv/bin/python bench/memory.py [--store DIR] [--inferences N] [--reloads N]

Writes ``bench/results/memory.json`` and prints a table. Configurations: the CPU arena and
memory patterns on/off, glibc's arena count (``MALLOC_ARENA_MAX``), and the server's own settings
with each weight tensor held once for the fp32 sessions (``EDGEFIT_SHARE_TENSORS``: the same
served set, with and without in-memory sharing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model_store.runner import SharedTensors, open_session, session_options  # noqa: E402
from model_store.store import open_store  # noqa: E402
from service.runtime.memory import release_free_memory  # noqa: E402

CONFIGS = [
    {"arena": True, "mem_pattern": True, "malloc_arena_max": None},
    {"arena": False, "mem_pattern": True, "malloc_arena_max": None},
    {"arena": True, "mem_pattern": False, "malloc_arena_max": None},
    {"arena": False, "mem_pattern": False, "malloc_arena_max": None},
    {"arena": True, "mem_pattern": True, "malloc_arena_max": "1"},
    {"arena": False, "mem_pattern": False, "malloc_arena_max": "1"},
    {"arena": False, "mem_pattern": False, "malloc_arena_max": "2"},
    {"arena": False, "mem_pattern": False, "malloc_arena_max": "2", "share_tensors": True},
]


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MB."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def child(config: dict[str, object], store_dir: Path, inferences: int, reloads: int) -> dict[str, object]:
    store = open_store(store_dir)
    variants = list(store.manifest.variants)

    def sessions() -> dict[str, ort.InferenceSession]:
        """As the server loads: each file's verified bytes, dropped once its session exists."""
        loaded = {}
        shared = SharedTensors() if config.get("share_tensors") else None
        for v in variants:
            options = session_options(1)
            options.enable_cpu_mem_arena = bool(config["arena"])
            options.enable_mem_pattern = bool(config["mem_pattern"])
            # As ``VariantRunner`` does: int8 sessions keep their own tensors.
            share = shared if v.precision == "fp32" else None
            loaded[v.name] = open_session(store.verify(v), options, store.verify_weights(v), share)
        release_free_memory()
        return loaded

    served = sessions()
    loaded, _ = rss_mb()
    timings: dict[str, list[float]] = {v.name: [] for v in variants}
    rng = random.Random(0)
    plan = [rng.choice(variants) for _ in range(inferences)]
    lock = threading.Lock()

    def work(part: list) -> None:  # type: ignore[type-arg]
        for v in part:
            size = v.resolution
            tensor = np.random.default_rng(len(part)).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            started = time.perf_counter()
            served[v.name].run([v.output_name], {v.input.name: tensor})
            elapsed = time.perf_counter() - started
            with lock:
                timings[v.name].append(elapsed)

    threads = [threading.Thread(target=work, args=(plan[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after_traffic, _ = rss_mb()
    after_reload = []
    for _ in range(reloads):
        # As a reload does: the new set is built while the old one serves, then swapped.
        served = sessions()
        release_free_memory()  # the old set is gone now
        for v in variants:  # a probe per variant, as the re-probe loop does
            size = v.resolution
            served[v.name].run([v.output_name], {v.input.name: np.zeros((1, size, size, 3), np.uint8)})
        after_reload.append(rss_mb()[0])
    after_reloads, peak = rss_mb()
    medians = {n: statistics.median(t) for n, t in timings.items() if t}
    return {
        **config,
        "rss_loaded_mb": round(loaded, 1),
        "rss_after_traffic_mb": round(after_traffic, 1),
        "rss_after_reloads_mb": round(after_reloads, 1),
        "rss_peak_mb": round(peak, 1),
        # From the first reload on: the first one may settle the allocator's pools.
        "reload_growth_mb_each": round((after_reload[-1] - after_reload[0]) / max(1, reloads - 1), 2),
        "median_inference_ms": round(1000 * statistics.median(medians.values()), 3),
        "median_inference_ms_by_variant": {n: round(1000 * m, 3) for n, m in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=REPO / "model_store" / "artifacts")
    parser.add_argument("--inferences", type=int, default=600)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.store, args.inferences, args.reloads)))
        return
    results = []
    for config in CONFIGS:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        if config["malloc_arena_max"]:
            env["MALLOC_ARENA_MAX"] = str(config["malloc_arena_max"])
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                json.dumps(config),
                "--store",
                str(args.store),
                "--inferences",
                str(args.inferences),
                "--reloads",
                str(args.reloads),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"arena={config['arena']!s:5} mem_pattern={config['mem_pattern']!s:5} "
            f"MALLOC_ARENA_MAX={config['malloc_arena_max'] or '-':2} "
            f"shared tensors={config.get('share_tensors', False)!s:5} "
            f"loaded {result['rss_loaded_mb']:6.1f} MB  traffic {result['rss_after_traffic_mb']:6.1f}  "
            f"reloads {result['rss_after_reloads_mb']:6.1f} (+{result['reload_growth_mb_each']} each)  "
            f"peak {result['rss_peak_mb']:6.1f}  "
            f"median inference {result['median_inference_ms']:.3f} ms",
            flush=True,
        )
    target = REPO / "bench" / "results" / "memory.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    target.write_text(
        json.dumps({"loadavg": load, "args": vars(args), "results": results}, indent=1, default=str)
    )
    print(f"wrote {target} (load average {load[0]:.2f})")


if __name__ == "__main__":
    main()
