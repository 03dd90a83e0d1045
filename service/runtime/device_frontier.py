"""The pool specialised to this device: its frontier, measured here and cached per fingerprint.

The first start on a device (a fingerprint: CPU model and flags, usable cores, onnxruntime
version, threads per inference) opens every candidate of the store, profiles it and chooses
(``service.core.frontier``); the choice is saved in the cache directory under that fingerprint and
the store's candidates, so a restart opens only the variants it serves, and a new CPU, a changed
quota or a new store chooses again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from model_store.imaging import ImageHeader
from model_store.manifest import Variant
from model_store.reference import answers, fails_here, reference_images
from model_store.runner import VariantRunner
from model_store.store import Store, StoreError
from service.core import frontier
from service.core.latency import Profile, decode_seconds
from service.runtime.profiler import decode_work, write_json

log = logging.getLogger(__name__)

# The image a candidate's decode is priced on when frontiers are compared: a typical ImageNet
# photo. The input's size moves every candidate's decode alike; its resolution's share differs.
TYPICAL_JPEG = ImageHeader("JPEG", 500, 375, 110_000)


@dataclass(frozen=True)
class Choice:
    """What this device serves of the pool, fastest first, why each other candidate is not, and
    what each candidate measured here was compared by (``points``' seconds)."""

    served: tuple[str, ...]
    left: dict[str, frontier.Left]
    seconds: dict[str, float]


def points(
    variants: Mapping[str, Variant],
    profiles: Mapping[str, Profile],
    decode_costs: Mapping[str, tuple[float, ...]],
) -> dict[str, frontier.Point]:
    """Each profiled variant as the frontier compares it: a typical JPEG's decode plus its
    profiled median inference here. The median, not the promise's tail: a profile's tail is the
    machine's noise of that moment more than the variant's, and the choice is kept."""
    return {
        name: frontier.Point(
            variant.top1,
            decode_seconds(decode_costs["JPEG"], decode_work(TYPICAL_JPEG, variant.preprocessing))
            + profiles[name].p50,
        )
        for name, variant in variants.items()
    }


def failed_int8_checks(store: Store, runners: Mapping[str, VariantRunner]) -> dict[str, frontier.Left]:
    """The int8 variants among ``runners`` that agree with their fp32 twin's recorded answers on
    the store's reference set less, here, than where they were built (``model_store.reference``),
    each with why. Without a usable reference set every checked variant fails: unchecked, its
    recorded accuracy is not vouched for here."""
    checks = {name: r.variant.int8_check for name, r in runners.items() if r.variant.int8_check}
    if not checks:
        return {}
    try:
        images = reference_images(store)
    except StoreError as exc:
        log.error("int8 variants not served: %s", exc)
        return {name: frontier.Left("int8_check_failed", f"not checked here: {exc}") for name in checks}
    failed = {}
    for name, check in checks.items():
        agreed = check.agreeing(answers(runners[name], images))
        words = (
            f"agrees with {check.twin} on {agreed} of the store's {len(images)} reference images here, "
            f"on {check.agreed} where it was built"
        )
        log.info("int8 check: %s %s", name, words)
        if fails_here(check, agreed):
            failed[name] = frontier.Left("int8_check_failed", words)
    return failed


def _path(cache_dir: Path, key: Mapping[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"frontier-{digest}.json"


def cache_key(
    fingerprint: Mapping[str, str | int], store: Store, pool: Mapping[str, Variant], size: int
) -> dict[str, object]:
    """What a choice depends on: the device, every candidate (its files and figures), the
    reference set its int8 variants are checked on, ``size`` and the rule (``frontier.RULE``)."""
    candidates = sorted(
        [v.name, v.sha256, v.weights.sha256 if v.weights else None, v.resolution, v.top1, v.size_bytes]
        for v in pool.values()
    )
    reference = store.manifest.reference
    return {
        **fingerprint,
        "candidates": candidates,
        "reference": reference.sha256 if reference else None,
        "size": size,
        "rule": frontier.RULE,
    }


def cached(cache_dir: Path, key: Mapping[str, object]) -> Choice | None:
    """The choice saved for ``key``; None when there is none (or it cannot be read)."""
    try:
        data = json.loads(_path(cache_dir, key).read_text())
        if data.get("key") != json.loads(json.dumps(key)):
            return None
        left = {name: frontier.Left(why["reason"], why["detail"]) for name, why in data["left"].items()}
        return Choice(tuple(data["served"]), left, {n: float(s) for n, s in data["seconds"].items()})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def save(cache_dir: Path, key: Mapping[str, object], choice: Choice) -> None:
    left = {name: {"reason": why.reason, "detail": why.detail} for name, why in choice.left.items()}
    write_json(
        _path(cache_dir, key),
        {"key": dict(key), "served": list(choice.served), "left": left, "seconds": choice.seconds},
    )
