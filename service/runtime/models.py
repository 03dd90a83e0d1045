"""Loading what a server serves: verify every file, open its session, know its latency here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from model_store.debris import clean_for_server
from model_store.manifest import Variant, Weights
from model_store.runner import SharedTensors, VariantRunner
from model_store.store import Store, StoreError, open_store
from service.core import frontier
from service.core.latency import Profile
from service.runtime import device_frontier
from service.runtime.profiler import load_or_profile, load_or_profile_decode, profile_key, table_key
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
    # The store's variants left out because a file of theirs failed (bit rot on flash, a bad
    # copy): name -> why, in words. The others are served.
    unavailable: dict[str, str] = field(default_factory=dict)
    # The pool's candidates this device does not serve, and why (``service.core.frontier``).
    left: dict[str, frontier.Left] = field(default_factory=dict)
    # What the frontier compared each candidate measured here by (``device_frontier.points``).
    frontier_seconds: dict[str, float] = field(default_factory=dict)

    def degraded(self) -> str | None:
        """What is left out and why, in one line (for /readyz, the status page); None if nothing."""
        if not self.unavailable:
            return None
        reasons = "; ".join(self.unavailable[n] for n in sorted(self.unavailable))
        return (
            f"degraded: {len(self.unavailable)} of {len(self.unavailable) + len(self.variants)} variants "
            f"unavailable ({', '.join(sorted(self.unavailable))}), the others are served: {reasons}"
        )


def _session(
    model: bytes,
    variant: Variant,
    threads: int,
    weights: tuple[str, bytes] | None,
    shared: SharedTensors | None,
) -> VariantRunner:
    try:
        return VariantRunner(model, variant, threads, weights, shared)
    except Exception as exc:  # onnxruntime's own error types are not part of its Python API
        # The runtime's message names its internals; the log keeps it, the user gets our words.
        log.error("onnxruntime refused %s (%s): %s", variant.name, variant.file, exc)
        raise StoreError(
            f"variant {variant.name}: onnxruntime cannot load {variant.file} (not a model it can run)"
        ) from exc


def load_models(
    settings: Settings, previous: ServedModels | None = None, *, fresh: bool = False
) -> ServedModels:
    """Blocking: verify sha256, open sessions, profile (or reuse known figures), and keep this
    device's frontier of the pool.

    ``previous`` is the set being served, if any: its sessions and figures are reused for
    unchanged files (by sha256) and nothing profiled or chosen now is persisted, since traffic may
    be running meanwhile. ``fresh`` (``edgefit store specialize --device``): every variant is
    profiled and the frontier chosen again, whatever this device's cache holds, and saved.
    With ``EDGEFIT_FRONTIER`` and without ``EDGEFIT_VARIANTS`` the store is a pool: the frontier
    chosen for this device and pool (``device_frontier``) is reused, or chosen from every
    candidate, profiled here, and the others are closed. Otherwise exactly the variants
    ``EDGEFIT_VARIANTS`` names are served, or every variant of the store.
    A variant whose file does not match its hash, cannot be read or is refused by onnxruntime
    (or whose label file is bad) is left out and named in ``unavailable``: a server never serves
    a file it cannot vouch for, and serves the others. Raises ``StoreError`` when the store as a
    whole cannot be served (an invalid manifest, an unknown variant asked for, no variant left),
    and on a reload that would lose a variant served now to a bad file (the served set stays).
    """
    if previous is None:
        # Left by store commands killed on an earlier run; only the start tidies, when no
        # command is running on the store.
        clean_for_server(settings.store_dir)
    store = open_store(settings.store_dir)
    wanted = settings.variants or tuple(v.name for v in store.manifest.variants)
    try:
        variants = {name: store.manifest.variant(name) for name in wanted}
    except KeyError as exc:
        raise StoreError(f"EDGEFIT_VARIANTS names {exc.args[0]}, which is not in {store.root}") from exc
    if not variants:
        raise StoreError(f"the store at {store.root} has no variants")
    fingerprint = table_key(settings.threads)
    choice_key = device_frontier.cache_key(fingerprint, store, variants, settings.frontier_size)
    specialize = settings.frontier and not settings.variants
    reuse = specialize and not fresh
    choice = device_frontier.cached(settings.cache_dir, choice_key) if reuse else None
    if choice is not None:
        log.info("this device's frontier of the pool reused from the cache: %s", ", ".join(choice.served))
        variants = {name: variants[name] for name in choice.served}
    shared = SharedTensors() if settings.share_tensors else None
    runners, names, unavailable = _open_runners(store, variants, previous, settings.threads, shared)
    variants = {name: v for name, v in variants.items() if name in runners}
    known = {}
    if previous is not None:
        known = {profile_key(previous.variants[n]): p for n, p in previous.profiles.items()}
    profiles = load_or_profile(
        runners,
        cache_dir=settings.cache_dir,
        key=fingerprint,
        runs=settings.profile_runs,
        warmup=settings.profile_warmup,
        known=known,
        persist=previous is None,
        fresh=fresh,
    )
    if previous is not None:
        decode = previous.decode_costs
    else:
        preprocessings = {v.preprocessing for v in variants.values()}
        decode = load_or_profile_decode(preprocessings, cache_dir=settings.cache_dir, key=fingerprint)
    left = {} if choice is None else choice.left
    seconds = {} if choice is None else choice.seconds
    if choice is None and specialize:
        failed = device_frontier.failed_int8_checks(store, runners)
        candidates = {name: v for name, v in variants.items() if name not in failed}
        points = device_frontier.points(candidates, profiles, decode)
        seconds = {name: p.seconds for name, p in points.items()}
        served, left = frontier.choose(points, settings.frontier_size)
        left.update(failed)
        if not served:
            reasons = "; ".join(f"{name}: {why.reason}: {why.detail}" for name, why in sorted(left.items()))
            raise StoreError(f"no variant can be served here: {reasons}")
        log.info(
            "this device's frontier of the pool (%d of %d candidates): %s",
            len(served),
            len(variants),
            ", ".join(served),
        )
        if previous is None and not unavailable:
            # A choice missing a candidate whose file failed would outlive the repair.
            choice = device_frontier.Choice(tuple(served), left, seconds)
            device_frontier.save(settings.cache_dir, choice_key, choice)
        variants = {name: variants[name] for name in served}
        runners = {name: runners[name] for name in served}
        profiles = {name: profiles[name] for name in served}
    return ServedModels(store, variants, runners, profiles, decode, names, unavailable, left, seconds)


def _open_runners(
    store: Store,
    variants: dict[str, Variant],
    previous: ServedModels | None,
    threads: int,
    shared: SharedTensors | None,
) -> tuple[dict[str, VariantRunner], dict[str, tuple[str, ...]], dict[str, str]]:
    """A runner per variant that can be served, its label sets, and why each other cannot be;
    the new sessions' tensors held in ``shared`` (see ``VariantRunner``).

    Every file is verified; sessions of files already served are kept. Raises ``StoreError`` when
    nothing can be served, or when a reload would drop a variant that is being served.
    """
    # One session per file (by sha256): the resolutions of one network may share a file whose
    # height and width are free. A reload keeps the sessions of files it already serves: rebuilding
    # them would cost time and memory for nothing (Triton, too, reloads only what changed). Every
    # file is still verified: a reload answers for the store as it is on disk.
    serving = {} if previous is None else {r.variant.sha256: r for r in previous.runners.values()}
    loaded: dict[str, VariantRunner] = {}  # by sha256
    runners: dict[str, VariantRunner] = {}
    names: dict[str, tuple[str, ...]] = {}
    unavailable: dict[str, str] = {}
    checked: set[str] = set()  # file names verified by this load, each read and hashed once
    weights: dict[Weights | None, tuple[str, bytes] | None] = {}  # shared files verified by this load
    for name, variant in variants.items():
        try:
            if variant.labels not in names:
                names[variant.labels] = store.labels(variant)
            runner = loaded.get(variant.sha256)
            if runner is None or variant.file not in checked:
                # The bytes that were hashed are the bytes loaded: no second open of the path.
                verified = store.verify(variant)
                checked.add(variant.file)
                if variant.weights not in weights:
                    weights[variant.weights] = store.verify_weights(variant)
                if runner is None:
                    runner = serving.get(variant.sha256) or _session(
                        verified, variant, threads, weights[variant.weights], shared
                    )
                    loaded[variant.sha256] = runner
        except StoreError as exc:
            if previous is not None and name in previous.variants:
                raise  # a reload must not drop a variant it serves: the served set stays
            unavailable[name] = str(exc)
            log.error("variant %s is unavailable, serving the others: %s", name, exc)
            continue
        runners[name] = runner.sharing_session(variant)
    if not runners:
        raise StoreError("no variant can be served: " + "; ".join(unavailable.values()))
    log.info(
        "verified %d variants in %d files from %s: %d sessions opened (%.0f MB of tensors held "
        "once for their fp32 sessions), %d kept",
        len(runners),
        len(checked),
        store.root,
        len(loaded.keys() - serving.keys()),
        0 if shared is None else shared.nbytes / 1e6,
        len(loaded.keys() & serving.keys()),
    )
    return runners, names, unavailable
