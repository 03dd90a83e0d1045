"""On-device profiling: each variant's inference latency on this machine, persisted.

The table is keyed by what changes it besides the file (CPU model, usable cores, onnxruntime
version, threads per inference) and holds one entry per model file and input size
(``profile_key``): a restart or a reload reuses the figures of unchanged files and profiles only
new ones.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image

from model_store.manifest import Preprocessing, Variant
from model_store.runner import VariantRunner, timed, timing_input
from service.core.latency import DecodeWork, Profile
from service.imaging import ImageHeader, draft_scale, load_tensor, read_header
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


def cpu_flags() -> str:
    """A digest of the CPU's instruction-set flags (``flags`` on x86, ``Features`` on Arm): two
    CPUs of one model name may differ in them (a VM hiding AVX-512), and int8 speed follows them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                return hashlib.sha256(flags.encode()).hexdigest()[:16]
    except OSError:
        pass
    return "unknown"


def table_key(threads: int) -> dict[str, str | int]:
    """This device's fingerprint, what the figures depend on besides the model file: the CPU (model
    and flags), usable cores, runtime and threads."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
        "cpus": available_cpus(),
        "onnxruntime": ort.__version__,
        "threads": threads,
    }


def _table_path(cache_dir: Path, key: Mapping[str, str | int]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"latency-{digest}.json"


def profile_key(variant: Variant) -> str:
    """What a latency figure belongs to: the file (by sha256) at the variant's input size, since
    one file may serve several resolutions."""
    return f"{variant.sha256}@{variant.resolution}"


def load_or_profile(
    runners: Mapping[str, VariantRunner],
    *,
    cache_dir: Path,
    key: Mapping[str, str | int],
    runs: int,
    warmup: int,
    known: Mapping[str, Profile],
    persist: bool,
    fresh: bool = False,
) -> dict[str, Profile]:
    """Profiles of every runner, by variant name.

    A variant is matched by ``profile_key`` (its file's sha256 and its resolution): a figure in
    ``known`` (the store served until now) or in this machine's persisted table is reused; only
    variants found in neither are profiled; with ``fresh``, every variant is, and saved. With
    ``persist`` false (a reload while the server takes traffic) new figures are used but not
    saved: measured under load, they would mislead every later start.
    """
    path = _table_path(cache_dir, key)
    saved: dict[str, Profile] = {}
    try:
        data = json.loads(path.read_text())
        if data.get("key") == dict(key):
            saved = {sha: Profile(**p) for sha, p in data["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    if fresh:
        # Only this store's figures are measured again: the others saved stay.
        measuring = {profile_key(r.variant) for r in runners.values()}
        saved = {k: p for k, p in saved.items() if k not in measuring}
    by_file = {**saved, **known}
    table: dict[str, Profile] = {}
    missing = []
    for name, runner in runners.items():
        found = by_file.get(profile_key(runner.variant))
        if found is None:
            missing.append(name)
        else:
            table[name] = found
    table.update(_profile(runners, missing, runs, warmup))
    if missing and persist:
        files = {**saved, **{profile_key(runners[n].variant): p for n, p in table.items()}}
        _save(path, key, files)
    elif missing:
        log.info("%d new variants were profiled while serving: figures used, not persisted", len(missing))
    else:
        log.info("latency of every variant reused (by file and size) from memory or %s", path)
    return table


def _profile(
    runners: Mapping[str, VariantRunner], names: Sequence[str], runs: int, warmup: int
) -> dict[str, Profile]:
    """Profiles of ``names``, timed in turns (one inference of each variant per round): the
    selector compares one variant's figure with another's, and timed one variant after another
    on a machine whose speed drifts, each would carry the speed of its own moment."""
    if not names:
        return {}
    started = time.perf_counter()
    inputs = {name: timing_input(runners[name]) for name in names}
    for name in names:
        for _ in range(warmup):
            runners[name].infer(inputs[name])
    timings: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names:
            timings[name].append(timed(runners[name], inputs[name]))
        if (i + 1) % max(1, runs // 4) == 0 or i + 1 == runs:
            log.info(
                "profiling %d variants: round %d/%d (%.1f s)",
                len(names),
                i + 1,
                runs,
                time.perf_counter() - started,
            )
    profiles = {name: Profile.of(timings[name]) for name in names}
    for name, profile in profiles.items():
        log.info("profiled %s: p50 %.2f ms, p95 %.2f ms", name, 1000 * profile.p50, 1000 * profile.p95)
    return profiles


def _save(path: Path, key: Mapping[str, str | int], files: Mapping[str, Profile]) -> None:
    write_json(path, {"key": dict(key), "files": {sha: vars(p) for sha, p in files.items()}})


def write_json(path: Path, data: object) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only cache only costs re-profiling at the next start.
        log.warning("could not persist the latency table to %s: %s", path, exc.strerror)


def _sample_image(fmt: str, width: int, height: int, noise: float) -> bytes:
    """A photo-like test image: smooth gradients plus noise (more noise, more bytes)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 250 / width, y * 250 / height, (x / width + y / height) * 120], axis=-1)
    pixels = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, quality=90)
    return out.getvalue()


def decoded_pixels(header: ImageHeader, preprocessing: Preprocessing) -> int:
    """Pixels the decoder produces for this image under this preprocessing."""
    scale = draft_scale(header, preprocessing)
    return -(-header.width // scale) * -(-header.height // scale)


def decode_work(header: ImageHeader, preprocessing: Preprocessing) -> DecodeWork:
    """The features of decoding this image for this preprocessing (``DecodeWork``)."""
    return (
        1.0,
        float(header.size_bytes),
        float(decoded_pixels(header, preprocessing)),
        float(preprocessing.crop**2),
    )


# Synthetic photos the decode cost is fitted on: sizes from a thumbnail to a phone-camera crop,
# smooth and noisy (bytes vary apart from pixels).
DECODE_PROFILE_SIZES = ((320, 240), (500, 375), (1000, 750))
DECODE_PROFILE_NOISE = (4.0, 30.0)


def _decode_targets(preprocessings: Collection[Preprocessing]) -> set[Preprocessing]:
    return {min(preprocessings, key=lambda p: p.crop), max(preprocessings, key=lambda p: p.crop)}


def load_or_profile_decode(
    preprocessings: Collection[Preprocessing], *, cache_dir: Path, key: Mapping[str, str | int]
) -> dict[str, tuple[float, ...]]:
    """``profile_decode``'s costs, reused from this machine's cache when they were measured for
    the same preprocessing and decoder; else measured and saved. Measuring takes seconds, the
    longest part of a start with a cached latency table: a restart after a crash should not."""
    targets = sorted(p.model_dump_json() for p in _decode_targets(preprocessings))
    full_key = {**key, "pillow": PIL.__version__, "targets": targets}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"decode-{digest}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("key") == full_key:
            return {fmt: tuple(float(c) for c in costs) for fmt, costs in data["costs"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    costs = profile_decode(preprocessings)
    write_json(path, {"key": full_key, "costs": costs})
    return costs


def profile_decode(preprocessings: Collection[Preprocessing], runs: int = 3) -> dict[str, tuple[float, ...]]:
    """Each served format's decode cost on this machine: least squares over synthetic photos
    decoded for the smallest and the largest of ``preprocessings`` (median of ``runs`` each),
    coefficients kept non-negative (a negative one is dropped and the rest refitted)."""
    targets = _decode_targets(preprocessings)
    costs = {}
    for fmt in ("JPEG", "PNG", "WEBP"):
        work, seconds = [], []
        for (width, height), noise in itertools.product(DECODE_PROFILE_SIZES, DECODE_PROFILE_NOISE):
            data = _sample_image(fmt, width, height, noise)
            header = read_header(data, 1 << 30)
            for preprocessing in targets:
                timings = []
                for _ in range(runs):
                    started = time.perf_counter()
                    load_tensor(data, preprocessing, 1 << 30)
                    timings.append(time.perf_counter() - started)
                work.append(decode_work(header, preprocessing))
                seconds.append(sorted(timings)[runs // 2])
        costs[fmt] = fit_non_negative(np.array(work), np.array(seconds))
    return costs


def fit_non_negative(features: np.ndarray, target: np.ndarray) -> tuple[float, ...]:
    """Least-squares coefficients, none negative: a feature whose coefficient comes out negative
    is dropped (its coefficient 0) and the rest refitted, until none is."""
    kept = np.ones(features.shape[1], dtype=bool)
    while True:
        coefficients = np.zeros(features.shape[1])
        coefficients[kept] = np.linalg.lstsq(features[:, kept], target, rcond=None)[0]
        if (coefficients >= 0).all():
            return tuple(float(c) for c in coefficients)
        kept &= coefficients > 0
