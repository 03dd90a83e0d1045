"""On-device profiling: each variant's inference latency on this machine, persisted.

The table is keyed by everything that changes it (CPU model, usable cores, onnxruntime version,
threads per inference, the store's contents), so a restart on the same machine reuses it and a
different machine, runtime or store profiles afresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from model_store.imaging import ImageHeader, draft_scale, load_tensor, read_header
from model_store.manifest import Preprocessing
from model_store.runner import VariantRunner, time_inference
from service.core.latency import Profile
from service.settings import available_cpus

log = logging.getLogger(__name__)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(store_digest: str, threads: int) -> dict[str, str | int]:
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cpus": available_cpus(),
        "onnxruntime": ort.__version__,
        "threads": threads,
        "store": store_digest,
    }


def _table_path(cache_dir: Path, key: Mapping[str, str | int]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"latency-{digest}.json"


def load_or_profile(
    runners: Mapping[str, VariantRunner],
    *,
    cache_dir: Path,
    key: Mapping[str, str | int],
    runs: int,
    warmup: int,
) -> dict[str, Profile]:
    """Profiles of every runner: from the persisted table where it has them, else measured now."""
    path = _table_path(cache_dir, key)
    table: dict[str, Profile] = {}
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == dict(key):
            table = {n: Profile(**p) for n, p in saved["variants"].items() if n in runners}
    except (OSError, ValueError, TypeError, KeyError):
        pass
    missing = [n for n in runners if n not in table]
    for i, name in enumerate(missing, 1):
        started = time.perf_counter()
        table[name] = Profile.of(time_inference(runners[name], runs, warmup))
        log.info(
            "profiled %s (%d/%d): p50 %.2f ms, p95 %.2f ms (%.1f s)",
            name,
            i,
            len(missing),
            1000 * table[name].p50,
            1000 * table[name].p95,
            time.perf_counter() - started,
        )
    if missing:
        _save(path, key, table)
    else:
        log.info("latency table for this machine loaded from %s", path)
    return table


def _save(path: Path, key: Mapping[str, str | int], table: Mapping[str, Profile]) -> None:
    data = {"key": dict(key), "variants": {n: vars(p) for n, p in table.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only cache only costs re-profiling at the next start.
        log.warning("could not persist the latency table to %s: %s", path, exc.strerror)


def _sample_image(fmt: str) -> bytes:
    """A photo-like test image (smooth gradients plus noise), 500x375 like ImageNet's."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    base = np.stack([x * 0.5, y * 0.6, (x + y) * 0.3], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, quality=90)
    return out.getvalue()


def decoded_pixels(header: ImageHeader, preprocessing: Preprocessing) -> int:
    """Pixels the decoder produces for this image under this preprocessing."""
    scale = draft_scale(header, preprocessing)
    return -(-header.width // scale) * -(-header.height // scale)


def profile_decode(preprocessing: Preprocessing, runs: int = 5) -> dict[str, float]:
    """Seconds per decoded pixel for each served format, measured on a synthetic photo."""
    rates = {}
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = _sample_image(fmt)
        header = read_header(data, 1 << 30)
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            load_tensor(data, preprocessing, 1 << 30)
            timings.append(time.perf_counter() - started)
        rates[fmt] = sorted(timings)[runs // 2] / decoded_pixels(header, preprocessing)
    return rates
