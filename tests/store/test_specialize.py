"""`edgefit store specialize` end to end on a copy of the default store: lite0 at 128 px, a short
search on a small labelled folder, the frontier's subnets written, scored on the held-out half,
and a server that serves them beside full-depth variants."""

import os
from pathlib import Path

import httpx
import pytest

from model_store.build.builder import commit
from model_store.build.recipes import LADDER
from model_store.build.specialize import Specialized, held_out_dataset, specialize
from model_store.evaluate import evaluate, held_out_half, labelled_images
from model_store.manifest import Manifest
from model_store.planning import write_answers
from model_store.store import Store, open_store
from tests.conftest import start_server

LITE0 = LADDER[0]
IMAGES = 60


@pytest.fixture(scope="module")
def images(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("labelled")
    for image in labelled_images(sample_dir)[:IMAGES]:
        (folder / image.path.name).symlink_to(image.path.resolve())
    return folder


@pytest.fixture(scope="module")
def specialized(store_dir: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Specialized:
    # lite0's published base and its 128 px variants: the subnets at 128 px are then faster than
    # any variant of this store, so the front has room for them whatever the machine's load.
    source = open_store(store_dir)
    variants = [v for v in source.manifest.variants if v.name.startswith(("lite0-224-", "lite0-128-"))]
    store = tmp_path_factory.mktemp("store")
    # Resolutions may share a file, subnets a weights file. Store files are never rewritten in
    # place (content-addressed names, the manifest swapped by rename): a hard link is an
    # independent copy.
    manifest = Manifest(variants=tuple(variants), reference=source.manifest.reference)
    for file in Store(store, manifest).files():
        os.link(store_dir / file, store / file)
    Store(store, Manifest()).write(manifest)
    return specialize(
        store, images, LITE0, (128,), k=2, search_images=20, budget_seconds=5, say=print, sampled_checks=1
    )


def test_recorded_top1_comes_from_the_held_out_half_only(specialized: Specialized, images: Path) -> None:
    store = specialized.store
    picks = [p.variant for p in specialized.picks]
    assert picks and all(v.subnet is not None and v.resolution == 128 for v in picks)
    dataset = held_out_dataset(images.name)
    held_out = held_out_half(labelled_images(images))
    base = store.manifest.variant("lite0-224-fp32")
    (base_now,) = evaluate(store, [base], held_out)
    for v in picks:
        # Nothing but the held-out measurement is recorded, and it is what scoring it again gives.
        assert set(v.evaluations) == {dataset} and v.top1_dataset == dataset
        (again,) = evaluate(store, [v], held_out)
        assert v.evaluations[dataset] == pytest.approx(again.top1)
        assert v.top1 == pytest.approx(base.top1 + again.top1 - base_now.top1, abs=1e-4)
    assert specialized.checks and all(c.measured_ms > 0 and c.predicted_ms > 0 for c in specialized.checks)


def test_a_store_mixing_subnets_and_full_variants_serves(
    specialized: Specialized, tabby: bytes, tmp_path: Path
) -> None:
    subnet = specialized.picks[0].variant
    served = [subnet.name, "lite0-128-fp32", "lite0-224-fp32"]
    server = start_server(specialized.store.root, tmp_path, variants=",".join(served))
    try:
        listed = {v["name"]: v for v in httpx.get(f"{server.url}/models").json()["variants"]}
        assert set(listed) == set(served)
        assert listed[subnet.name]["depth"] == f"d{len(subnet.subnet.kept_blocks)}"
        assert listed[subnet.name]["kept_block_count"] == len(subnet.subnet.kept_blocks)
        assert (listed["lite0-224-fp32"]["depth"], listed["lite0-224-fp32"]["kept_block_count"]) == (
            "full",
            None,
        )
        answer = httpx.post(
            f"{server.url}/classify", params={"model": subnet.name}, content=tabby, timeout=30
        ).json()
        assert answer["model"]["name"] == subnet.name
        assert answer["predictions"][0]["label"]
        assert (
            httpx.post(f"{server.url}/classify", params={"budget": "1000ms"}, content=tabby).status_code
            == 200
        )
    finally:
        server.stop()


def test_committing_subnets_keeps_the_recorded_answers(store_dir: Path, tmp_path: Path) -> None:
    """``store specialize`` replaces a family's subnets: the recorded answers stay, and a server
    plans from those of the variants it left as they were."""
    source = open_store(store_dir)
    subnet = next(v for v in source.manifest.variants if v.subnet is not None)
    small, big = source.manifest.variant("lite0-128-fp32"), source.manifest.variant("lite0-224-fp32")
    variants = (subnet, small, big)
    reference = source.manifest.reference
    for file in Store(tmp_path, Manifest(variants=variants, reference=reference)).files():
        os.link(store_dir / file, tmp_path / file)
    store = Store(tmp_path, Manifest()).write(Manifest(variants=variants, reference=reference))
    store, recorded = write_answers(store, {v.name: ([0.9, 0.4], [True, False]) for v in variants}, "d")
    staging = tmp_path / ".staging-test"
    staging.mkdir()
    after = commit(store, staging, [big], replacing=[subnet.name])
    assert after.manifest.answers == recorded and (tmp_path / recorded.file).is_file()
    assert {v.name for v in after.manifest.variants} == {small.name, big.name}
    assert not (tmp_path / subnet.file).exists()
