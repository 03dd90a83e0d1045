"""Loading what a server serves: verify every file, open its session, know its latency here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from model_store.manifest import Preprocessing, Variant
from model_store.runner import VariantRunner
from model_store.store import Store, StoreError, open_store
from service.core.latency import Profile
from service.runtime.profiler import load_or_profile, profile_decode, table_key
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModels:
    store: Store
    variants: dict[str, Variant]
    runners: dict[str, VariantRunner]
    profiles: dict[str, Profile]
    decode_seconds_per_pixel: dict[str, float]


def load_models(settings: Settings) -> ServedModels:
    """Blocking: verify sha256, open sessions, profile (or reuse this machine's table).

    Raises ``StoreError`` if the store is invalid, a requested variant is unknown or a file
    does not match its hash — a server never serves a file it cannot vouch for.
    """
    store = open_store(settings.store_dir)
    wanted = settings.variants or tuple(v.name for v in store.manifest.variants)
    try:
        variants = {name: store.manifest.variant(name) for name in wanted}
    except KeyError as exc:
        raise StoreError(f"EDGEFIT_VARIANTS names {exc.args[0]}, which is not in {store.root}") from exc
    if not variants:
        raise StoreError(f"the store at {store.root} has no variants")
    runners = {}
    for name, variant in variants.items():
        path: Path = store.verify(variant)
        runners[name] = VariantRunner(path, variant, threads=settings.threads)
    log.info("verified and loaded %d variants from %s", len(runners), store.root)
    profiles = load_or_profile(
        runners,
        cache_dir=settings.cache_dir,
        key=table_key(store.digest, settings.threads),
        runs=settings.profile_runs,
        warmup=settings.profile_warmup,
    )
    # Decode cost per pixel barely depends on the target size: measure it once, for a mid one.
    reference: Preprocessing = max(
        (v.preprocessing for v in variants.values()), key=lambda p: p.resize_shorter
    )
    return ServedModels(store, variants, runners, profiles, profile_decode(reference))
