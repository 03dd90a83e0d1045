"""``edgefit store specialize``: keep a family's subnets that are on this device's frontier.

:func:`specialize` runs four steps, each a function of this module:

1. :func:`measure_device`: each full-depth variant of the family in the store (fp32 and int8, at
   every resolution searched) is profiled block by block (``latency_table``).
2. :func:`search_front`: the search (``search``) scores subnets on the search half of the
   labelled sample and keeps the Pareto front of (predicted latency, search-half top-1); at most
   ``k`` of its subnets spanning its latency range are picked.
3. :func:`export_picks`: each pick is exported like any variant (``builder.build_pair``: parity
   against its PyTorch subnet, int8 with the same agreement gate); :func:`score_held_out`
   measures it on the held-out half: its recorded ``top1`` is ``derived`` = the family's
   published figure + (subnet − published base), both on the held-out half, which the manifest
   names.
4. :func:`keep_undominated`: the table's prediction is checked against whole-network
   measurements of the picks (and of a few other sampled subnets); only the picked precision is
   written (the fp32 twin of an int8 pick is dominated and only served its checks), and only
   where no full-depth variant is both faster and more accurate.

A failed run leaves the store as it was. The family's previous subnets are replaced.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from model_store.build.builder import build_pair, commit, drop_disagreeing_int8, every_nth
from model_store.build.export import export_onnx, load_pretrained
from model_store.build.latency_table import (
    BlockTable,
    PredictionCheck,
    check_prediction,
    measure_table,
    whole_network_ms,
)
from model_store.build.recipes import LADDER, Recipe, lite_preprocessing, variant_name
from model_store.build.search import (
    Candidate,
    PrefixCachedAccuracy,
    SearchSpace,
    evolve,
    spread_picks,
)
from model_store.build.shared_weights import share_weights
from model_store.build.subnets import SubnetModule
from model_store.evaluate import (
    LabelledImage,
    evaluate,
    held_out_dataset,
    held_out_half,
    labelled_images,
    record,
    search_half,
)
from model_store.image_input import wrap_file
from model_store.manifest import Manifest, Precision, Subnet, Variant
from model_store.store import Store, StoreError, open_store

log = logging.getLogger(__name__)

Say = Callable[[str], None]
TABLE_RUNS = 20


@dataclass(frozen=True)
class Pick:
    variant: Variant
    candidate: Candidate
    measured_ms: float


@dataclass(frozen=True)
class Specialized:
    store: Store
    front: list[Candidate]
    picks: list[Pick]
    checks: list[PredictionCheck]
    scored: int
    seconds: float


def recipe_for(arch: str) -> Recipe:
    """The ladder recipe called ``arch`` (``lite0``); raises ``StoreError`` for an unknown one."""
    for recipe in LADDER:
        if recipe.arch == arch:
            return recipe
    raise StoreError(f"no family {arch!r}: choose one of {', '.join(r.arch for r in LADDER)}")


def _full_depth(store: Store, recipe: Recipe, resolution: int, precision: Precision) -> Variant | None:
    try:
        return store.manifest.variant(variant_name(recipe.arch, resolution, precision))
    except KeyError:
        return None


@dataclass(frozen=True)
class DeviceTables:
    """Step 1's result: this device's latency for the family and its rivals."""

    # (resolution, precision) -> block table, where the store has the full network with a top1.
    tables: dict[tuple[int, Precision], BlockTable]
    full_top1: dict[tuple[int, Precision], float]  # the store's top1 of those full networks
    total_blocks: int
    # The store's full-depth variants (every family) at their latency measured now.
    competitors: list[Candidate]

    def subnet(self, kept_blocks: tuple[int, ...]) -> Subnet:
        return Subnet(kept_blocks=kept_blocks, total_blocks=self.total_blocks)


def specialize(
    store_root: Path,
    images_dir: Path,
    recipe: Recipe,
    resolutions: Sequence[int],
    k: int,
    search_images: int,
    budget_seconds: float,
    say: Say,
    sampled_checks: int = 2,
) -> Specialized:
    """Search ``recipe``'s subnets at ``resolutions`` and write up to ``k`` of them into the store.

    Raises ``StoreError`` when the store lacks the full-depth variants the table is built from, or
    an export check fails.
    """
    started = time.monotonic()
    store = open_store(store_root)
    images = labelled_images(images_dir)
    base = _published_base(store, recipe)
    device = measure_device(store, recipe, resolutions, say)
    scored, front = search_front(recipe, resolutions, device, images, search_images, budget_seconds, say)
    picks = spread_picks(front, k)
    say(f"{recipe.arch}: picked {len(picks)} subnets of the front's {len(front)} points")

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store_root))
    try:
        staged = export_picks(recipe, picks, device, staging, images, say)
        manifest = score_held_out(
            store, recipe, base, staged, staging, images, held_out_dataset(images_dir.name), say
        )
        written, checks = keep_undominated(store, recipe, picks, manifest, device, staging, say)
        checks += _sampled_checks(store, recipe, scored, picks, device, staging, sampled_checks)
        replacing = {
            v.name for v in store.manifest.variants if v.family == recipe.family and v.subnet is not None
        }
        shared = share_weights(staging, [p.variant for p in written])
        written = [replace(p, variant=v) for p, v in zip(written, shared, strict=True)]
        store = commit(store, staging, [manifest.variant(base.name), *shared], replacing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Specialized(
        store,
        front,
        written,
        checks,
        len({(c.resolution, c.kept_blocks) for c in scored}),
        time.monotonic() - started,
    )


def _published_base(store: Store, recipe: Recipe) -> Variant:
    """The family's full network at its native resolution, with its published top-1: every
    subnet's recorded ``top1`` is derived from it."""
    base = _full_depth(store, recipe, recipe.native_resolution, "fp32")
    if base is None or base.top1_source != "published":
        raise StoreError(
            f"{recipe.arch}: the store has no published full-depth base; run `edgefit store build`"
        )
    return base


def measure_device(store: Store, recipe: Recipe, resolutions: Sequence[int], say: Say) -> DeviceTables:
    """Step 1: the block tables of the family's full-depth variants at ``resolutions``."""
    say(
        f"{recipe.arch}: this device's latency: its full-depth variants, block tables at "
        f"{', '.join(map(str, resolutions))} px"
    )
    competitors = _full_depth_points(store)
    measured_ms = {c.name: c.predicted_ms for c in competitors}
    tables: dict[tuple[int, Precision], BlockTable] = {}
    full_top1: dict[tuple[int, Precision], float] = {}
    total_blocks = 0
    for resolution in resolutions:
        if _full_depth(store, recipe, resolution, "fp32") is None:
            raise StoreError(
                f"{recipe.arch}: the store has no {variant_name(recipe.arch, resolution, 'fp32')}"
            )
        total_blocks = len(load_pretrained(recipe, resolution)._blocks)  # type: ignore[arg-type]
        for precision in ("fp32", "int8"):
            # int8 only where the full network passed the gate: its subnets rarely agree better.
            variant = _full_depth(store, recipe, resolution, precision)
            if variant is None or variant.top1 is None:
                continue
            tables[resolution, precision] = measure_table(
                store.verify(variant), resolution, total_blocks, measured_ms[variant.name], TABLE_RUNS
            )
            full_top1[resolution, precision] = variant.top1
    return DeviceTables(tables, full_top1, total_blocks, competitors)


def search_front(
    recipe: Recipe,
    resolutions: Sequence[int],
    device: DeviceTables,
    images: Sequence[LabelledImage],
    search_images: int,
    budget_seconds: float,
    say: Say,
) -> tuple[list[Candidate], list[Candidate]]:
    """Step 2: every subnet scored on the search half, and the front (``search.evolve``)."""
    searched = every_nth(search_half(images), search_images)
    say(f"{recipe.arch}: caching stem activations of {len(searched)} search-half images")
    accuracy = {
        r: PrefixCachedAccuracy(load_pretrained(recipe, r), searched, lite_preprocessing(r), r)
        for r in resolutions
    }
    space = SearchSpace(recipe.arch, accuracy, device.tables, device.full_top1, device.competitors)
    return evolve(space, budget_seconds, say)


def export_picks(
    recipe: Recipe,
    picks: Sequence[Candidate],
    device: DeviceTables,
    staging: Path,
    images: Sequence[LabelledImage],
    say: Say,
) -> list[Variant]:
    """Step 3a: each pick exported and checked like any variant, into ``staging``."""
    staged: list[Variant] = []
    for number, pick in enumerate(picks, 1):
        subnet = device.subnet(pick.kept_blocks)
        name = variant_name(recipe.arch, pick.resolution, pick.precision, subnet)
        say(f"{recipe.arch}: export {number}/{len(picks)}: {name}")
        # Calibration and parity images come from the search half too: the held-out half stays
        # unseen until it is scored. int8 only where the search had an int8 table: elsewhere the
        # full network failed the agreement gate and only the fp32 subnet can be written.
        quantize = (pick.resolution, "int8") in device.tables
        staged += build_pair(recipe, pick.resolution, staging, search_half(images), subnet, quantize)
    return staged


def score_held_out(
    store: Store,
    recipe: Recipe,
    base: Variant,
    staged: Sequence[Variant],
    staging: Path,
    images: Sequence[LabelledImage],
    held_name: str,
    say: Say,
) -> Manifest:
    """Step 3b: the base and the staged subnets on the held-out half; the subnets' ``top1``
    derived from the base's published figure; int8 twins that disagree with fp32 dropped."""
    held_out = held_out_half(images)
    say(f"{recipe.arch}: held-out top-1 on {len(held_out)} images ({held_name})")
    results = evaluate(Store(staging, Manifest(variants=tuple(staged))), staged, held_out)
    results += evaluate(store, [base], held_out)
    manifest = record(Manifest(variants=(base, *staged)), held_name, results)
    return drop_disagreeing_int8(manifest, {r.variant: r.predictions for r in results})


def keep_undominated(
    store: Store,
    recipe: Recipe,
    picks: Sequence[Candidate],
    manifest: Manifest,
    device: DeviceTables,
    staging: Path,
    say: Say,
) -> tuple[list[Pick], list[PredictionCheck]]:
    """Step 4: each pick measured whole beside its full network; kept only where no full-depth
    variant of the store (any family) is both faster and more accurate, by the measured latency
    and the held-out figure. An int8 that failed the gate leaves its fp32 twin to try."""
    written: list[Pick] = []
    checks: list[PredictionCheck] = []
    # Measured again beside the picks, so that a change of the machine's load since the search
    # cannot decide which side of the front a pick falls.
    competitors = _full_depth_points(store)
    for pick in picks:
        measured = _measure_pick(store, recipe, pick, manifest, device, staging)
        checks += [check for _, check in measured.values()]
        options = [measured[p] for p in (pick.precision, "fp32") if p in measured]
        kept = next((o for o in options if not _dominated(o[0], o[1], competitors)), None)
        if kept is None:
            say(f"{recipe.arch}: {pick.name} not written: a full-depth one is faster and more accurate")
            continue
        if kept[0].precision != pick.precision:
            say(f"{recipe.arch}: {kept[0].name} written instead of {pick.name} (int8 agreement gate)")
        written.append(Pick(kept[0], pick, kept[1].measured_ms))
    return written, checks


def _measure_pick(
    store: Store,
    recipe: Recipe,
    pick: Candidate,
    manifest: Manifest,
    device: DeviceTables,
    staging: Path,
) -> dict[Precision, tuple[Variant, PredictionCheck]]:
    """The staged variants of one pick, by precision, each with its latency check."""
    subnet = device.subnet(pick.kept_blocks)
    staged = {v.name for v in manifest.variants}
    measured: dict[Precision, tuple[Variant, PredictionCheck]] = {}
    precisions: tuple[Precision, ...] = ("fp32", "int8")
    for precision in precisions:
        name = variant_name(recipe.arch, pick.resolution, precision, subnet)
        # Not there: an int8 that failed the agreement gate. No table: an int8 where the full
        # network failed it (not searched, not written).
        if name not in staged or (pick.resolution, precision) not in device.tables:
            continue
        variant = manifest.variant(name)
        check = check_prediction(
            name,
            device.tables[pick.resolution, precision],
            pick.kept_blocks,
            (staging / variant.file).read_bytes(),
            store.verify(_full(store, recipe, pick.resolution, precision)),
            pick.resolution,
        )
        measured[precision] = (variant, check)
    return measured


def _full_depth_points(store: Store) -> list[Candidate]:
    """The store's full-depth variants with a top1 (every family and resolution, not only the
    searched ones), at their latency measured now: a subnet is kept only where none of them is
    both faster and more accurate."""
    points = []
    for v in store.manifest.variants:
        if v.top1 is not None and v.subnet is None:
            ms = whole_network_ms(store.verify(v), v.resolution, TABLE_RUNS)
            points.append(
                Candidate(v.name, v.resolution, v.precision, (), ms, None, v.top1, v.subnet is None)
            )
    return points


def _dominated(variant: Variant, check: PredictionCheck, competitors: Sequence[Candidate]) -> bool:
    """Whether the subnet ``variant`` is no faster than its own full network measured beside it
    (a subnet runs a subset of that network's work: not being faster is the machine's load, and a
    held-out ``top1`` above the full network's is noise of the held-out images), or a full-depth
    variant is both faster and more accurate."""
    ms, top1 = check.measured_ms, variant.top1 or 0.0
    return check.full_measured_ms <= ms or any(
        c.predicted_ms <= ms and c.estimated_top1 >= top1 and (c.predicted_ms < ms or c.estimated_top1 > top1)
        for c in competitors
    )


def _sampled_checks(
    store: Store,
    recipe: Recipe,
    scored: Sequence[Candidate],
    picks: Sequence[Candidate],
    device: DeviceTables,
    staging: Path,
    count: int,
) -> list[PredictionCheck]:
    """Whole-network fp32 measurements of ``count`` scored subnets that were not picked."""
    others = sorted(
        {(c.resolution, c.kept_blocks) for c in scored if not c.full_depth}
        - {(p.resolution, p.kept_blocks) for p in picks}
    )
    checks = []
    rng = random.Random(0)  # noqa: S311 -- a sample, not a secret: seeded to be repeatable
    for resolution, kept in rng.sample(others, min(count, len(others))):
        subnet = device.subnet(kept)
        name = variant_name(recipe.arch, resolution, "fp32", subnet)
        path = staging / f"check-{name}.onnx"
        export_onnx(SubnetModule(load_pretrained(recipe, resolution), subnet), resolution, path)
        wrap_file(path, path, lite_preprocessing(resolution), resolution)
        full = store.verify(_full(store, recipe, resolution, "fp32"))
        checks.append(
            check_prediction(
                name, device.tables[resolution, "fp32"], kept, path.read_bytes(), full, resolution
            )
        )
    return checks


def _full(store: Store, recipe: Recipe, resolution: int, precision: Precision) -> Variant:
    variant = _full_depth(store, recipe, resolution, precision)
    if variant is None:
        raise StoreError(f"{recipe.arch}: no full-depth {precision} variant at {resolution} px")
    return variant
