"""How well the server's start-up decode cost prices real photos (DEVELOPERS.md, "Decode cost as
a linear model"): the cost is fitted on synthetic photos exactly as ``edgefit serve`` fits it,
then each held-out JPEG of the sample is decoded for every input size of the store, and the ratio
measured / predicted is summarised per size. Equal ratios across sizes are what keeps the selector from
pricing large variants out (the live correction is one ratio per format).

``python bench/decode_fit.py`` prints the table. Environment: EDGEFIT_STORE_DIR,
EDGEFIT_SAMPLE_DIR (as ``bench/run.py``); BENCH_QUICK=1 decodes 50 photos instead of 500.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import servers


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from model_store.evaluate import held_out_half, labelled_images
    from model_store.imaging import load_tensor, read_header
    from model_store.store import open_store
    from service.core.latency import decode_seconds
    from service.runtime.profiler import decode_work, profile_decode

    env = servers.setup()
    preprocessings = {v.preprocessing for v in open_store(env.store).manifest.variants}
    costs = profile_decode(preprocessings)
    count = 50 if os.environ.get("BENCH_QUICK", "") not in ("", "0") else 500
    photos = [i.path.read_bytes() for i in held_out_half(labelled_images(env.sample))[:count]]
    fitted = ", ".join(f"{c:.3g}" for c in costs["JPEG"])
    print(f"JPEG cost (fixed s, s/byte, s/decoded px, s/input px): {fitted}")
    print(f"{len(photos)} held-out photos; measured / predicted decode + preprocess time\n")
    print("| input px | p5 | median | p95 |\n| ---: | ---: | ---: | ---: |")
    for preprocessing in sorted(preprocessings, key=lambda p: p.crop):
        ratios = []
        for data in photos:
            header = read_header(data, 1 << 30)
            started = time.perf_counter()
            load_tensor(data, preprocessing, 1 << 30)
            measured = time.perf_counter() - started
            ratios.append(measured / decode_seconds(costs["JPEG"], decode_work(header, preprocessing)))
        p5, p50, p95 = np.quantile(ratios, [0.05, 0.5, 0.95])
        print(f"| {preprocessing.crop} | {p5:.2f} | {p50:.2f} | {p95:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
