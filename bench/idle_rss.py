"""The server's RSS with a whole store, ready and idle: one ``edgefit serve`` process (the
benchmark's settings, ``bench/servers.py``), ``/readyz`` 200, then RSS read from ``/proc`` after
a few seconds of idleness. Prints one line; ``SOAK_RSS_LIMIT_MB`` is the acceptance's limit.

    .venv/bin/python bench/idle_rss.py   (environment: as bench/run.py)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import servers
import soak

IDLE_S = 5.0


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from model_store.store import open_store

    env = servers.setup()
    variants = open_store(env.store).manifest.variants
    with servers.edgefit(env.store, env.workers, env.threads, env.results) as server:
        time.sleep(IDLE_S)
        rss = soak.rss_mb(server.pid)
    size_mb = sum(v.size_bytes for v in variants) / 1e6
    print(f"RSS ready and idle: {rss:.1f} MB ({len(variants)} variants, {size_mb:.0f} MB of ONNX files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
