"""Opening, verifying and atomically writing a store."""

import os
from pathlib import Path

import pytest

from model_store.manifest import Manifest
from model_store.store import StoreError, open_store
from tests.store.conftest import add_tiny


def test_tampered_file_is_never_vouched_for(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add_tiny(tmp_path, tiny_onnx)
    variant = store.manifest.variants[0]
    path = store.path_of(variant)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="refusing to use"):
        store.verify(variant)
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.verify(variant)


def test_manifest_paths_cannot_leave_the_store(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add_tiny(tmp_path / "store", tiny_onnx)
    raw = (tmp_path / "store" / "manifest.json").read_text()
    (tmp_path / "store" / "manifest.json").write_text(
        raw.replace(store.manifest.variants[0].file, "../tiny.onnx")
    )
    with pytest.raises(StoreError, match="not a valid manifest"):
        open_store(tmp_path / "store")


def test_the_manifest_is_readable_by_other_users(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add_tiny(tmp_path, tiny_onnx)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert store.path_of(store.manifest.variants[0]).stat().st_mode & 0o044 == 0o044


def test_invalid_and_missing_manifests(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing"):
        open_store(tmp_path)
    assert open_store(tmp_path, missing_ok=True).manifest == Manifest()
    (tmp_path / "manifest.json").write_text('{"schema_version": 2, "variants": [{"name": "x"}]}')
    with pytest.raises(StoreError, match="not a valid manifest"):
        open_store(tmp_path)
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "variants": []}')
    with pytest.raises(StoreError, match=r"schema_version 1.*rebuild the store"):
        open_store(tmp_path)


def test_a_failed_write_leaves_the_previous_manifest(tmp_path: Path, tiny_onnx: Path, monkeypatch) -> None:
    store = add_tiny(tmp_path, tiny_onnx)
    before = (tmp_path / "manifest.json").read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write(Manifest())
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_add_leaves_no_file_behind(tmp_path: Path, tiny_onnx: Path, monkeypatch) -> None:
    add_tiny(tmp_path, tiny_onnx)
    files = sorted(p.name for p in tmp_path.iterdir())
    from model_store import store as store_module

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_atomic_write_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        add_tiny(tmp_path, tiny_onnx, "tiny2")
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_a_changed_label_file_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    store = add_tiny(tmp_path / "store", tiny_onnx, labels_file=labels)
    (variant,) = store.manifest.variants
    assert store.labels(variant)[999] == "class 999"
    (store.root / variant.labels).write_text("".join(f"other {i}\n" for i in range(1000)))
    with pytest.raises(StoreError, match="does not match its hash"):
        store.labels(variant)
