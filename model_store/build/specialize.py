"""``edgefit store specialize``: a family's subnets, cut to depth, added to the pool.

:func:`specialize` runs four steps, each a function of this module:

1. :func:`measure_device`: each full-depth variant of the family in the store (fp32 and int8, at
   every resolution searched) is profiled block by block (``latency_table``).
2. :func:`search_front`: the search (``search``) scores subnets on the search half of the
   labelled sample; at each resolution, up to its share of ``k`` subnets spanning the front of
   (predicted latency, search-half top-1) are picked (``search.picks_per_resolution``).
3. :func:`export_picks`: each pick is exported like any variant (``builder.build_pair``: parity
   against its PyTorch subnet, and an int8 twin quantised as the ladder's are);
   :func:`score_held_out` measures both on the held-out half: a recorded ``top1`` is
   ``derived`` = the family's published figure + (subnet − published base), both on the held-out
   half, which the manifest names; each int8 twin's agreement with fp32 is logged.
4. :func:`check_picks`: the table's prediction is checked against whole-network measurements
   of the picks (and of a few other sampled subnets). Every pick is written at both precisions,
   whether or not a full-depth variant beats it here: the device that serves the pool chooses.

A failed run leaves the store as it was. The family's previous subnets are replaced.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model_store.answers import AnswerCache
from model_store.build.builder import build_pair, commit, every_nth, log_int8_agreement
from model_store.build.export import export_onnx, load_pretrained
from model_store.build.latency_table import (
    BlockTable,
    Model,
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
    picks_per_resolution,
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
from model_store.reference import record_int8_checks, reference_images
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
    """Step 1's result: this device's latency for the family."""

    # (resolution, precision) -> block table, where the store has the full network with a top1.
    tables: dict[tuple[int, Precision], BlockTable]
    full_top1: dict[tuple[int, Precision], float]  # the store's top1 of those full networks
    total_blocks: int

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
    answers: AnswerCache | None = None,
) -> Specialized:
    """Search ``recipe``'s subnets at ``resolutions`` and write up to ``k`` of them into the store,
    each in fp32 and int8; their answers on the held-out half go to ``answers``.

    Raises ``StoreError`` when the store lacks the full-depth variants the table is built from, or
    an export check fails.
    """
    started = time.monotonic()
    store = open_store(store_root)
    images = labelled_images(images_dir)
    base = _published_base(store, recipe)
    device = measure_device(store, recipe, resolutions, say)
    scored, front = search_front(recipe, resolutions, device, images, search_images, budget_seconds, say)
    picks = picks_per_resolution(scored, resolutions, k)
    per_resolution = ", ".join(f"{sum(p.resolution == r for p in picks)} at {r} px" for r in resolutions)
    say(f"{recipe.arch}: picked {len(picks)} subnets ({per_resolution})")

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store_root))
    try:
        # Scored and measured as written: on the shared weights files.
        staged = share_weights(staging, export_picks(recipe, picks, device, staging, images, say), "subnets")
        manifest = score_held_out(
            store, recipe, base, staged, staging, images, held_out_dataset(images_dir.name), say, answers
        )
        if store.manifest.reference is not None:
            # Each int8 subnet recorded against its fp32 twin on the store's reference set.
            manifest = manifest.model_copy(update={"reference": store.manifest.reference})
            manifest = record_int8_checks(Store(staging, manifest), reference_images(store))
        written, checks = check_picks(store, Store(staging, manifest), recipe, scored, picks, device)
        checks += _sampled_checks(store, recipe, scored, picks, device, staging, sampled_checks)
        replacing = {
            v.name for v in store.manifest.variants if v.family == recipe.family and v.subnet is not None
        }
        store = commit(
            store, staging, [manifest.variant(base.name), *(p.variant for p in written)], replacing
        )
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


def _model(store: Store, variant: Variant) -> Model:
    return store.verify(variant), store.verify_weights(variant)


def measure_device(store: Store, recipe: Recipe, resolutions: Sequence[int], say: Say) -> DeviceTables:
    """Step 1: the block tables of the family's full-depth variants at ``resolutions``."""
    say(
        f"{recipe.arch}: this device's latency: its full-depth variants, block tables at "
        f"{', '.join(map(str, resolutions))} px"
    )
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
            # int8 where the store has the full int8 network (``store build`` writes it).
            variant = _full_depth(store, recipe, resolution, precision)
            if variant is None or variant.top1 is None:
                continue
            model = _model(store, variant)
            whole_ms = whole_network_ms(model, resolution, TABLE_RUNS)
            tables[resolution, precision] = measure_table(
                model, resolution, total_blocks, whole_ms, TABLE_RUNS
            )
            full_top1[resolution, precision] = variant.top1
    return DeviceTables(tables, full_top1, total_blocks)


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
    space = SearchSpace(recipe.arch, accuracy, device.tables, device.full_top1)
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
        # int8 where the search had an int8 table (the store has the full int8 network here).
        quantize = (pick.resolution, "int8") in device.tables
        name = variant_name(recipe.arch, pick.resolution, "fp32", subnet)
        say(f"{recipe.arch}: export {number}/{len(picks)}: {name}{' and int8' if quantize else ''}")
        # Calibration and parity images come from the search half too: the held-out half stays
        # unseen until it is scored.
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
    answers: AnswerCache | None = None,
) -> Manifest:
    """Step 3b: the base and the staged subnets on the held-out half; the subnets' ``top1``
    derived from the base's published figure; each int8 twin's agreement with fp32 logged.
    The subnets' answers go to ``answers``."""
    held_out = held_out_half(images)
    say(f"{recipe.arch}: held-out top-1 on {len(held_out)} images ({held_name})")
    results = evaluate(Store(staging, Manifest(variants=tuple(staged))), staged, held_out)
    if answers is not None:
        for variant, result in zip(staged, results, strict=True):
            answers.remember(variant, held_out, result)
    results += evaluate(store, [base], held_out)
    manifest = record(Manifest(variants=(base, *staged)), held_name, results)
    log_int8_agreement(manifest, {r.variant: r.predictions for r in results})
    return manifest


def check_picks(
    store: Store,
    staged: Store,
    recipe: Recipe,
    scored: Sequence[Candidate],
    picks: Sequence[Candidate],
    device: DeviceTables,
) -> tuple[list[Pick], list[PredictionCheck]]:
    """Step 4: each staged variant of each pick (``scored`` has its candidate at each
    precision) measured whole beside its full network, against the table's prediction; all of
    them are written."""
    candidates = {(c.resolution, c.kept_blocks, c.precision): c for c in scored}
    written: list[Pick] = []
    checks: list[PredictionCheck] = []
    precisions: tuple[Precision, ...] = ("fp32", "int8")
    for pick in picks:
        subnet = device.subnet(pick.kept_blocks)
        for precision in precisions:
            if (pick.resolution, precision) not in device.tables:
                continue  # not exported (``export_picks``)
            variant = staged.manifest.variant(variant_name(recipe.arch, pick.resolution, precision, subnet))
            check = check_prediction(
                variant.name,
                device.tables[pick.resolution, precision],
                pick.kept_blocks,
                _model(staged, variant),
                _model(store, _full(store, recipe, pick.resolution, precision)),
                pick.resolution,
            )
            checks.append(check)
            candidate = candidates[pick.resolution, pick.kept_blocks, precision]
            written.append(Pick(variant, candidate, check.measured_ms))
    return written, checks


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
        full = _model(store, _full(store, recipe, resolution, "fp32"))
        checks.append(
            check_prediction(
                name, device.tables[resolution, "fp32"], kept, (path.read_bytes(), None), full, resolution
            )
        )
    return checks


def _full(store: Store, recipe: Recipe, resolution: int, precision: Precision) -> Variant:
    variant = _full_depth(store, recipe, resolution, precision)
    if variant is None:
        raise StoreError(f"{recipe.arch}: no full-depth {precision} variant at {resolution} px")
    return variant
