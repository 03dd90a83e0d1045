"""Loading what a server serves: verify every file, open its session, know its latency here."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from model_store.manifest import Variant
from model_store.runner import VariantRunner
from model_store.store import Store, StoreError, open_store
from service.core.latency import Profile
from service.runtime.profiler import load_or_profile, profile_decode, profile_key, table_key
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModels:
    store: Store
    variants: dict[str, Variant]
    runners: dict[str, VariantRunner]
    profiles: dict[str, Profile]
    decode_costs: dict[str, tuple[float, ...]]
    labels: dict[str, tuple[str, ...]]


def _session(model: bytes, variant: Variant, threads: int) -> VariantRunner:
    try:
        return VariantRunner(model, variant, threads=threads)
    except Exception as exc:  # onnxruntime's own error types are not part of its Python API
        # The runtime's message names its internals; the log keeps it, the user gets our words.
        log.error("onnxruntime refused %s (%s): %s", variant.name, variant.file, exc)
        raise StoreError(
            f"variant {variant.name}: onnxruntime cannot load {variant.file} (not a model it can run)"
        ) from exc


def load_models(settings: Settings, previous: ServedModels | None = None) -> ServedModels:
    """Blocking: verify sha256, open sessions, profile (or reuse known figures).

    ``previous`` is the set being served, if any: its sessions and figures are reused for
    unchanged files (by sha256) and nothing profiled now is persisted, since traffic may be
    running meanwhile.
    Raises ``StoreError`` for anything about the store that prevents serving it: an invalid
    manifest, an unknown variant or label set, a file that does not match its hash or that
    onnxruntime refuses — a server never serves a file it cannot vouch for.
    """
    store = open_store(settings.store_dir)
    wanted = settings.variants or tuple(v.name for v in store.manifest.variants)
    try:
        variants = {name: store.manifest.variant(name) for name in wanted}
    except KeyError as exc:
        raise StoreError(f"EDGEFIT_VARIANTS names {exc.args[0]}, which is not in {store.root}") from exc
    if not variants:
        raise StoreError(f"the store at {store.root} has no variants")
    names = {v.labels: store.labels(v) for v in variants.values()}
    runners = _open_runners(store, variants, previous, settings.threads)
    known = {}
    if previous is not None:
        known = {profile_key(previous.variants[n]): p for n, p in previous.profiles.items()}
    profiles = load_or_profile(
        runners,
        cache_dir=settings.cache_dir,
        key=table_key(settings.threads),
        runs=settings.profile_runs,
        warmup=settings.profile_warmup,
        known=known,
        persist=previous is None,
    )
    if previous is not None:
        decode = previous.decode_costs
    else:
        decode = profile_decode({v.preprocessing for v in variants.values()})
    return ServedModels(store, variants, runners, profiles, decode, names)


def _open_runners(
    store: Store, variants: dict[str, Variant], previous: ServedModels | None, threads: int
) -> dict[str, VariantRunner]:
    """A runner per variant, every file verified; sessions of files already served are kept."""
    # One session per file (by sha256): the resolutions of one network may share a file whose
    # height and width are free. A reload keeps the sessions of files it already serves: rebuilding
    # them would cost time and memory for nothing (Triton, too, reloads only what changed). Every
    # file is still verified: a reload answers for the store as it is on disk.
    serving = {} if previous is None else {r.variant.sha256: r for r in previous.runners.values()}
    loaded: dict[str, VariantRunner] = {}  # by sha256
    runners: dict[str, VariantRunner] = {}
    checked: set[str] = set()  # file names verified by this load, each read and hashed once
    for name, variant in variants.items():
        runner = loaded.get(variant.sha256)
        if runner is None or variant.file not in checked:
            # The bytes that were hashed are the bytes loaded: no second open of the path.
            verified = store.verify(variant)
            checked.add(variant.file)
            if runner is None:
                runner = serving.get(variant.sha256) or _session(verified, variant, threads)
                loaded[variant.sha256] = runner
        runners[name] = runner.sharing_session(variant)
    log.info(
        "verified %d variants in %d files from %s: %d sessions opened, %d kept",
        len(runners),
        len(checked),
        store.root,
        len(loaded.keys() - serving.keys()),
        len(loaded.keys() & serving.keys()),
    )
    return runners
