"""Subnets cut from one network share one weights file in the store: written once, verified
before use, never reached through a path of the graph's choosing. In-process, over tiny stores
whose "subnets" share a weights tensor."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from model_store.build.shared_weights import share_weights
from model_store.manifest import Manifest, Subnet, Variant
from model_store.runner import SharedTensors, VariantRunner
from model_store.store import Store, StoreError, open_store
from tests.app.conftest import image_bytes, serve, settings_for, tiny_model, tiny_variant
from tests.app.test_degraded import corrupt

SUBNETS = ("tiny-16-d1-fp32", "tiny-32-d1-fp32")


def subnet_store(root: Path) -> Store:
    """Two tiny subnets of one network (the same weights at two resolutions) and a full one."""
    root.mkdir(parents=True, exist_ok=True)
    variants = []
    for name, resolution, seed in ((SUBNETS[0], 16, 7), (SUBNETS[1], 32, 7), ("tiny-24-fp32", 24, 3)):
        data = tiny_model(resolution, seed)
        (root / f"{name}.onnx").write_bytes(data)
        subnet = Subnet(kept_blocks=(0,), total_blocks=2) if "-d1-" in name else None
        variants.append(tiny_variant(name, resolution, data, top1=0.5 + resolution / 100, subnet=subnet))
    return Store(root, Manifest()).write(Manifest(variants=tuple(variants)))


def shared_store(root: Path) -> Store:
    """``subnet_store`` with its subnets rewritten onto one weights file, as ``store specialize``
    writes them."""
    store = subnet_store(root)
    subnets = share_weights(root, [store.manifest.variant(n) for n in SUBNETS], "subnets")
    return store.write(store.manifest.replace(*subnets))


def answers(runner: VariantRunner) -> np.ndarray:
    size = runner.variant.resolution
    return runner.infer(np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8))


def test_subnets_of_one_network_keep_one_copy_of_its_weights_and_answer_the_same(tmp_path: Path) -> None:
    plain = subnet_store(tmp_path / "plain")
    shared = shared_store(tmp_path / "shared")
    subnets = [shared.manifest.variant(n) for n in SUBNETS]
    weights = {v.weights for v in subnets}
    assert len(weights) == 1 and None not in weights
    (blob,) = weights
    assert blob is not None and blob.file.endswith(".weights")
    # The shared tensor once (3 x 1000 floats); the graphs keep only their structure.
    assert blob.size_bytes == 3 * 1000 * 4 == (tmp_path / "shared" / blob.file).stat().st_size
    assert all(shared.path_of(v).stat().st_size < 1000 for v in subnets)
    assert shared.manifest.variant("tiny-24-fp32").weights is None
    # Only the files the manifest names are left.
    assert {p.name for p in (tmp_path / "shared").iterdir()} == shared.files() | {"manifest.json"}
    for name in [*SUBNETS, "tiny-24-fp32"]:
        before, after = plain.manifest.variant(name), shared.manifest.variant(name)
        if after.weights is None:
            assert after == before
        else:  # what it needs: its graph and the tensors it uses
            assert after.size_bytes == shared.path_of(after).stat().st_size + blob.size_bytes
        a = answers(VariantRunner.from_store(plain, before))
        b = answers(VariantRunner.from_store(shared, after))
        assert np.array_equal(a, b)


def test_a_variant_with_shared_weights_does_not_load_without_them(tmp_path: Path) -> None:
    store = shared_store(tmp_path)
    variant = store.manifest.variant(SUBNETS[0])
    with pytest.raises(ValueError, match="shared weights"):
        VariantRunner(store.verify(variant), variant)


def test_a_corrupt_weights_file_leaves_out_every_variant_that_uses_it(tmp_path: Path) -> None:
    store = shared_store(tmp_path / "store")
    blob = store.manifest.variant(SUBNETS[0]).weights
    assert blob is not None
    corrupt(tmp_path / "store" / blob.file)
    with pytest.raises(StoreError, match="sha256"):
        store.verify_weights(store.manifest.variant(SUBNETS[1]))
    with serve(settings_for(tmp_path / "store", tmp_path / "cache")) as client:
        ready = client.get("/readyz").json()
        assert ready["variants"] == 1 and set(ready["unavailable"]) == set(SUBNETS)
        assert all(blob.file in reason for reason in ready["unavailable"].values())
        answer = client.post("/classify", content=image_bytes("JPEG"), headers={"content-type": "image/jpeg"})
        assert answer.status_code == 200 and answer.json()["model"]["name"] == "tiny-24-fp32"


def test_a_weights_file_outside_the_store_cannot_be_named(tmp_path: Path) -> None:
    store = shared_store(tmp_path / "store")
    entry = store.manifest.variant(SUBNETS[0]).model_dump(mode="json")
    for outside in ("../elsewhere.weights", "/etc/passwd", "sub/dir.weights"):
        entry["weights"]["file"] = outside
        with pytest.raises(ValidationError, match="not allowed"):
            Variant.model_validate(entry)


@pytest.mark.parametrize("shared", [True, False], ids=["with shared weights", "self-contained"])
def test_a_graph_cannot_reach_a_file_through_its_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    """onnxruntime resolves a model's external data relative to the working directory when no
    file is given from memory: a graph naming a file there is refused, not read."""
    store = shared_store(tmp_path / "store")
    variant = store.manifest.variant(SUBNETS[0] if shared else "tiny-24-fp32")
    model = onnx.load_from_string(store.verify(variant))
    weights = store.verify_weights(variant)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "planted.weights").write_bytes(bytes(3 * 1000 * 4))
    monkeypatch.chdir(elsewhere)
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data or np.asarray(tensor.float_data, np.float32).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", "planted.weights"), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    assert os.path.exists("planted.weights")
    with pytest.raises(Exception, match=r"planted\.weights"):
        VariantRunner(model.SerializeToString(), variant, weights=weights)


def test_the_debris_of_a_killed_command_includes_unnamed_weights_files(tmp_path: Path) -> None:
    from model_store.debris import remove_debris

    store = shared_store(tmp_path)
    left = tmp_path / "tiny-fp32-subnets.0123456789ab.weights"
    left.write_bytes(b"left by a command killed before its manifest")
    assert remove_debris(tmp_path, unreferenced=True) == [left.name]
    assert {p.name for p in tmp_path.iterdir()} == open_store(tmp_path).files() | {"manifest.json"}
    assert store.verify_weights(store.manifest.variant(SUBNETS[0])) is not None


def test_fp32_sessions_hold_a_tensor_they_share_once_and_answer_the_same(tmp_path: Path) -> None:
    """Two variants with the same weights (a subnet's, at two resolutions): optimised here and
    opened with the tensor shared, they hold it once and answer as sessions of their own do (to
    float rounding: the unpacked kernel sums in another order)."""
    store = shared_store(tmp_path)
    shared = SharedTensors()
    for name in SUBNETS:
        variant = store.manifest.variant(name)
        weights = store.verify_weights(variant)
        alone = VariantRunner(store.verify(variant), variant, weights=weights)
        sharing = VariantRunner(store.verify(variant), variant, weights=weights, shared=shared)
        assert sharing.shared is shared
        np.testing.assert_allclose(answers(sharing), answers(alone), rtol=1e-5, atol=1e-4)
    assert shared.nbytes == 3 * 1000 * 4


def test_an_int8_variant_keeps_its_own_tensors(tmp_path: Path) -> None:
    """int8 kernels pack their weights per session and run ~2x slower without: not shared."""
    data = tiny_model(16, 7)
    variant = tiny_variant("tiny-16-int8", 16, data, top1=0.5).model_copy(update={"precision": "int8"})
    shared = SharedTensors()
    runner = VariantRunner(data, variant, shared=shared)
    assert runner.shared is None and shared.nbytes == 0


@pytest.mark.parametrize("share", [True, False], ids=["shared tensors", "own tensors"])
def test_a_store_with_shared_weights_serves_either_way(tmp_path: Path, share: bool) -> None:
    shared_store(tmp_path / "store")
    settings = settings_for(tmp_path / "store", tmp_path / "cache", share_tensors=share)
    with serve(settings) as client:
        assert client.get("/readyz").json()["variants"] == 3
        listed = client.get("/models").json()["variants"]
        assert all("weights" not in v and "file" not in v and v["size_bytes"] > 0 for v in listed)
        for name in [*SUBNETS, "tiny-24-fp32"]:
            answer = client.post(
                f"/classify?model={name}", content=image_bytes("PNG"), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200 and answer.json()["model"]["name"] == name


def test_without_a_writable_temporary_directory_a_session_holds_its_own_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = shared_store(tmp_path)
    variant = store.manifest.variant(SUBNETS[0])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    shared = SharedTensors()
    weights = store.verify_weights(variant)
    runner = VariantRunner(store.verify(variant), variant, weights=weights, shared=shared)
    assert answers(runner).shape == (1000,) and shared.nbytes == 0
    assert "holds its own tensors" in caplog.text
