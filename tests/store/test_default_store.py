"""Acceptance of the default store that `make setup` built (model_store/artifacts): a pool of
candidates for whatever device serves it, not the building machine's frontier."""

from pathlib import Path

import pytest

from model_store.build.recipes import LADDER, PRECISIONS, variant_name
from model_store.build.specialize import held_out_dataset
from model_store.evaluate import evaluate, held_out_half, labelled_images
from model_store.manifest import depth_tag
from model_store.reference import REFERENCE_IMAGES, answers, reference_images
from model_store.runner import VariantRunner
from model_store.store import open_store

# What the pool may take on disk, each shared file once (`edgefit store list`'s last line).
MAX_POOL_BYTES = 150 * 2**20


@pytest.fixture(scope="module")
def store(store_dir: Path):
    return open_store(store_dir)


def test_a_real_pool(store) -> None:
    variants = store.manifest.variants
    assert len(variants) >= 30
    for v in variants:
        # A subnet at the pool's fast end skips most of lite0-128's blocks (~57 M MACs).
        assert v.size_bytes > 1_000_000 and v.params and v.macs
        assert v.macs > (20_000_000 if v.subnet else 100_000_000), v.name
        assert v.top1 is not None and v.top1_source in ("published", "derived")
        store.verify(v)
        store.verify_weights(v)
    # Every step of the ladder in both precisions, whatever its speed or int8 agreement here.
    names = {v.name for v in variants}
    for recipe in LADDER:
        native = store.manifest.variant(variant_name(recipe.arch, recipe.native_resolution, "fp32"))
        assert (native.top1, native.top1_source) == (recipe.published_top1, "published")
        assert len(recipe.resolutions) >= 2
        for resolution in recipe.resolutions:
            for precision in PRECISIONS:
                assert variant_name(recipe.arch, resolution, precision) in names
    assert {v.family for v in variants} == {r.family for r in LADDER}
    on_disk = sum((store.root / file).stat().st_size for file in store.files())
    assert on_disk <= MAX_POOL_BYTES


def test_derived_figures_are_published_base_plus_measured_difference(store) -> None:
    for v in store.manifest.variants:
        if v.top1_source != "derived":
            continue
        base = store.manifest.variant(v.top1_base)
        dataset = v.top1_dataset
        expected = base.top1 + v.evaluations[dataset] - base.evaluations[dataset]
        assert v.top1 == pytest.approx(expected, abs=1e-4)


def test_every_int8_variant_has_its_fp32_twin_and_full_depth_ones_lose_at_most_two_points(store) -> None:
    int8 = [v for v in store.manifest.variants if v.precision == "int8"]
    assert 2 * len(int8) == len(store.manifest.variants)
    for v in int8:
        twin = store.manifest.variant(v.name.removesuffix("-int8") + "-fp32")
        assert v.evaluations
        for dataset, accuracy in v.evaluations.items():
            # A subnet's int8 twin may lose more (fewer blocks, and half the images): that is
            # for the serving device to weigh. A broken quantisation loses everything.
            assert twin.evaluations[dataset] - accuracy <= (0.1 if v.subnet else 0.02), v.name


def test_every_int8_variant_is_recorded_on_the_reference_set_it_carries(store) -> None:
    images = reference_images(store)
    assert store.manifest.reference is not None and len(images) == REFERENCE_IMAGES
    for v in store.manifest.variants:
        if v.precision != "int8":
            assert v.int8_check is None
            continue
        check = v.int8_check
        assert check is not None and check.twin == v.name.removesuffix("-int8") + "-fp32", v.name
        # What was recorded is what the variants answer (this machine built the store).
        twin = store.manifest.variant(check.twin)
        assert answers(VariantRunner.from_store(store, twin), images) == check.twin_answers, v.name
        assert answers(VariantRunner.from_store(store, v), images) == check.answers, v.name
        # Not a degenerate record: a broken quantisation agrees on almost none (the shallowest
        # int8 subnets agree on ~75 %).
        assert check.agreed >= 0.5 * len(images), v.name


def test_specialised_subnets_record_held_out_accuracy(store, sample_dir: Path) -> None:
    subnets = [v for v in store.manifest.variants if v.subnet is not None]
    # Written whether or not a full-depth variant beats them on the building machine.
    assert len(subnets) >= 15
    assert {v.precision for v in subnets} == {"fp32", "int8"}
    assert {v.resolution for v in subnets} == {128, 160, 192}
    held_out = held_out_dataset(sample_dir.name)
    for v in subnets:
        assert f"-{depth_tag(v.subnet)}-" in v.name and len(v.subnet.kept_blocks) < v.subnet.total_blocks
        # Derived from the half the search never saw, and nothing else measured for it.
        assert (v.top1_source, v.top1_dataset, set(v.evaluations)) == ("derived", held_out, {held_out})
        base = store.manifest.variant(v.top1_base)
        assert base.top1_source == "published" and held_out in base.evaluations


def test_lite0_classifies_the_sample_through_the_store_code_path(store, sample_dir: Path) -> None:
    names = ["lite0-224-fp32", "lite0-224-int8"]
    images = labelled_images(sample_dir)
    fp32, int8 = evaluate(store, [store.manifest.variant(n) for n in names], images)
    assert fp32.top1 >= 0.85
    assert fp32.top1 - int8.top1 <= 0.02
    # What the build recorded is what this code measures again.
    for result in (fp32, int8):
        assert store.manifest.variant(result.variant).evaluations[sample_dir.name] == pytest.approx(
            result.top1
        )


@pytest.mark.parametrize("arch", ["lite0", "lite1"])
def test_a_familys_fp32_resolutions_share_one_file(store, sample_dir: Path, arch: str) -> None:
    """One file (free height and width) serves every full-depth fp32 resolution of lite0 and of
    lite1 (whose 208 px pads as its 240 px does; the build checked each against its own
    export), and each classifies there as the build recorded."""
    family = f"efficientnet_{arch}"
    ladder = [
        v for v in store.manifest.variants if v.family == family and v.precision == "fp32" and not v.subnet
    ]
    assert len(ladder) >= 2 and len({v.file for v in ladder}) == 1
    for result in evaluate(store, ladder, labelled_images(sample_dir)):
        recorded = store.manifest.variant(result.variant).evaluations[sample_dir.name]
        assert result.top1 == pytest.approx(recorded), result.variant


def test_variants_cut_from_one_network_keep_its_weights_once(store, sample_dir: Path) -> None:
    """Every variant keeps its tensors in a weights file shared by its family's variants of its
    precision: one for the ladder's resolutions, one for the subnets. On disk the subnets take
    little more than one of them, and each classifies as the build recorded through the store
    code path."""
    variants = store.manifest.variants
    assert all(v.weights is not None for v in variants)
    groups = {(v.family, v.precision, v.subnet is None) for v in variants}
    assert len({v.weights for v in variants}) == len(groups)
    subnets = [v for v in variants if v.subnet is not None]
    subnet_groups = {(v.family, v.precision) for v in subnets}
    files = {v.file for v in subnets} | {v.weights.file for v in subnets if v.weights is not None}
    on_disk = sum((store.root / file).stat().st_size for file in files)
    assert on_disk < 1.5 * len(subnet_groups) * max(v.size_bytes for v in subnets)
    dataset = held_out_dataset(sample_dir.name)
    int8 = next(v for v in subnets if v.precision == "int8")
    for result in evaluate(store, [subnets[0], int8], held_out_half(labelled_images(sample_dir))):
        recorded = store.manifest.variant(result.variant).evaluations[dataset]
        assert result.top1 == pytest.approx(recorded), result.variant
