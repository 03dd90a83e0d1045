"""Acceptance of the default store that `make setup` built (model_store/artifacts)."""

from pathlib import Path

import pytest

from model_store.build.recipes import LADDER, variant_name
from model_store.build.specialize import held_out_dataset
from model_store.evaluate import evaluate, held_out_half, labelled_images
from model_store.manifest import depth_tag
from model_store.store import open_store


@pytest.fixture(scope="module")
def store(store_dir: Path):
    return open_store(store_dir)


def test_a_real_ladder(store) -> None:
    variants = store.manifest.variants
    assert len(variants) >= 12
    for v in variants:
        # A subnet at the frontier's fast end skips most of lite0-128's blocks (~57 M MACs).
        assert v.size_bytes > 1_000_000 and v.params and v.macs
        assert v.macs > (20_000_000 if v.subnet else 100_000_000), v.name
        assert v.top1 is not None and v.top1_source in ("published", "derived")
        store.verify(v)
    for recipe in LADDER:
        native = store.manifest.variant(variant_name(recipe.arch, recipe.native_resolution, "fp32"))
        assert (native.top1, native.top1_source) == (recipe.published_top1, "published")
        resolutions = {v.resolution for v in variants if v.family == recipe.family}
        assert recipe.native_resolution in resolutions and len(resolutions) >= 2
        assert {v.precision for v in variants if v.family == recipe.family} == {"fp32", "int8"}


def test_derived_figures_are_published_base_plus_measured_difference(store) -> None:
    for v in store.manifest.variants:
        if v.top1_source != "derived":
            continue
        base = store.manifest.variant(v.top1_base)
        dataset = v.top1_dataset
        expected = base.top1 + v.evaluations[dataset] - base.evaluations[dataset]
        assert v.top1 == pytest.approx(expected, abs=1e-4)


def test_int8_loses_at_most_two_points(store) -> None:
    pairs = 0
    names = {v.name for v in store.manifest.variants}
    for v in store.manifest.variants:
        twin_name = v.name.removesuffix("-int8") + "-fp32"
        # A dominated fp32 twin is not written (a subnet's, or a full-depth one that a faster
        # variant beats): its gate ran at build or specialisation.
        if v.precision == "int8" and twin_name in names:
            twin = store.manifest.variant(twin_name)
            for dataset, accuracy in v.evaluations.items():
                assert twin.evaluations[dataset] - accuracy <= 0.02, v.name
                pairs += 1
    # At least one per family (which ones pass the gate depends on the building CPU's kernels).
    assert pairs >= len(LADDER)


def test_specialised_subnets_record_held_out_accuracy(store, sample_dir: Path) -> None:
    subnets = [v for v in store.manifest.variants if v.subnet is not None]
    # How many the frontier keeps depends on the building machine (its latency, its int8 gate).
    assert subnets
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


def test_the_lite0_fp32_resolutions_share_one_file(store, sample_dir: Path) -> None:
    """One file (free height and width) serves every full-depth lite0 fp32 resolution (the build
    checked each against its own export), and each classifies there as the build recorded."""
    ladder = [
        v
        for v in store.manifest.variants
        if v.family == LADDER[0].family and v.precision == "fp32" and not v.subnet
    ]
    assert len(ladder) >= 2 and len({v.file for v in ladder}) == 1
    for result in evaluate(store, ladder, labelled_images(sample_dir)):
        recorded = store.manifest.variant(result.variant).evaluations[sample_dir.name]
        assert result.top1 == pytest.approx(recorded), result.variant


def test_subnets_keep_their_networks_weights_once(store, sample_dir: Path) -> None:
    """A family's subnets share one weights file per precision: on disk they take little more
    than one of them, and each classifies as the build recorded through the store code path."""
    subnets = [v for v in store.manifest.variants if v.subnet is not None]
    assert subnets and all(v.weights is not None for v in subnets)
    groups = {(v.family, v.precision) for v in subnets}
    assert len({v.weights for v in subnets}) == len(groups)
    files = {v.file for v in subnets} | {v.weights.file for v in subnets if v.weights is not None}
    on_disk = sum((store.root / file).stat().st_size for file in files)
    assert on_disk < 1.5 * len(groups) * max(v.size_bytes for v in subnets)
    dataset = held_out_dataset(sample_dir.name)
    for result in evaluate(store, subnets[:2], held_out_half(labelled_images(sample_dir))):
        recorded = store.manifest.variant(result.variant).evaluations[dataset]
        assert result.top1 == pytest.approx(recorded), result.variant
