"""`edgefit store list|evaluate|plot` on a copy of the default store."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_store import planning
from model_store.evaluate import labelled_images
from model_store.manifest import SCHEMA_VERSION, Manifest
from model_store.plot import Point, frontier
from model_store.store import Store, StoreError, open_store

# The published lite0 base and a derived variant of it, in fp32 only.
BASE, DERIVED = "lite0-224-fp32", "lite0-160-fp32"
NAMES = (BASE, DERIVED)


@pytest.fixture
def small_store(store_dir: Path, tmp_path: Path) -> Path:
    store = open_store(store_dir)
    copy = tmp_path / "store"
    copy.mkdir()
    # Their graph, the weights file they share, the reference set their int8 twins' checks need
    # and the recorded answers.
    variants = tuple(store.manifest.variant(n) for n in NAMES)
    kept = Manifest(variants=variants, reference=store.manifest.reference, answers=store.manifest.answers)
    for file in Store(store_dir, kept).files():
        shutil.copy(store_dir / file, copy)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["variants"] = [v for v in manifest["variants"] if v["name"] in NAMES]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def edgefit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, check=False
    )


def test_list(small_store: Path) -> None:
    result = edgefit("store", "list", "--store", str(small_store))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "MACs" in lines[0] and len(lines) == 3 + len(NAMES)
    files = open_store(small_store).files()
    on_disk = sum((small_store / f).stat().st_size for f in files) / 2**20
    assert lines[-1] == f"{len(NAMES)} variants in {len(files)} files, {on_disk:.2f} MB on disk"
    assert any("lite0-224-fp32" in line and "75.1%" in line and "published" in line for line in lines)


def test_evaluate_an_imagefolder_tree_records_a_named_dataset(
    small_store: Path, sample_dir: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "val"
    for image in labelled_images(sample_dir)[:40]:
        wnid = image.path.name.split("_")[0]
        (tree / wnid).mkdir(parents=True, exist_ok=True)
        (tree / wnid / "img.JPEG").symlink_to(image.path.resolve())
    result = edgefit(
        "store", "evaluate", "--store", str(small_store), "--images", str(tree), "--dataset", "val40"
    )
    assert result.returncode == 0, result.stderr
    assert "evaluate on val40" in result.stderr  # the progress bar
    manifest = open_store(small_store).manifest
    base, low = manifest.variant(BASE), manifest.variant(DERIVED)
    assert "val40" in base.evaluations and "val40" in low.evaluations
    assert base.top1_source == "published" and base.top1 == 0.751
    assert (low.top1_source, low.top1_dataset) == ("derived", "val40")
    assert low.top1 == pytest.approx(0.751 + low.evaluations["val40"] - base.evaluations["val40"], abs=1e-4)


def test_evaluate_refuses_unlabelled_folders(tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="no labelled images"):
        labelled_images(tmp_path)


def test_plot_writes_the_frontier(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "frontier.svg"
    result = edgefit("store", "plot", "--store", str(small_store), "--out", str(out), "--runs", "3")
    assert result.returncode == 0, result.stderr
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_frontier_marks_dominated_points() -> None:
    points = [
        Point("fast", 2.0, 0.60, "int8", subnet=False),
        Point("good", 5.0, 0.75, "int8", subnet=True),
        Point("worse-and-slower", 6.0, 0.70, "fp32", subnet=False),
        Point("best", 20.0, 0.78, "fp32", subnet=False),
    ]
    assert frontier(points) == {"fast", "good", "best"}


def test_specialize_prints_its_frontier_and_duration(
    small_store: Path, sample_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "labelled"
    images.mkdir()
    for image in labelled_images(sample_dir)[:30]:
        (images / image.path.name).symlink_to(image.path.resolve())
    result = edgefit(
        "store", "specialize", "--store", str(small_store), "--images", str(images), "--family", "lite0",
        "--resolutions", "160", "--k", "1", "--search-images", "10", "--budget", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "frontier on this device with lite0" in out and "median error" in out
    assert re.search(r"specialized lite0 in \d+ s; the store has 3 variants", out)
    (subnet,) = [v for v in open_store(small_store).manifest.variants if v.subnet is not None]
    assert subnet.name.startswith("lite0-160-d") and subnet.precision == "fp32"  # no lite0-160-int8 here
    assert subnet.name in out


def test_specialize_refuses_an_unknown_family(small_store: Path, sample_dir: Path) -> None:
    result = edgefit(
        "store", "specialize", "--store", str(small_store), "--images", str(sample_dir), "--family", "b7"
    )
    assert result.returncode == 1 and "no family 'b7'" in result.stderr


def test_cascades_records_every_variants_answers_for_servers_to_plan_from(
    small_store: Path, sample_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "sample"
    images.mkdir()
    for image in labelled_images(sample_dir)[:80]:
        shutil.copy(image.path, images)
    for _ in range(2):  # the same answers again: the same file, and only it
        result = edgefit("store", "cascades", "--store", str(small_store), "--images", str(images))
        assert result.returncode == 0, result.stderr
        assert "answers" in result.stderr  # progress
    store = open_store(small_store)
    recorded = store.manifest.answers
    assert store.manifest.schema_version == SCHEMA_VERSION and recorded is not None
    assert (recorded.dataset, recorded.images) == ("sample", 80) and recorded.file in result.stdout
    assert sorted(p.name for p in small_store.glob("answers.*")) == [recorded.file]
    book = json.loads(store.verified("answers", recorded.file, recorded.sha256))["variants"]
    assert {name: entry["sha256"] for name, entry in book.items()} == {
        v.name: v.sha256 for v in store.manifest.variants
    }
    assert all(len(e["top_scores"]) == len(e["correct"]) == 80 for e in book.values())
    assert book[BASE]["correct"].count("1") > 40  # lite0 at 224 px is right on most of them
    planning.plans(store, {v.name: 0.001 * v.resolution for v in store.manifest.variants})
    assert edgefit("store", "list", "--store", str(small_store)).returncode == 0
