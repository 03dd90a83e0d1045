"""``edgefit store add``: validation, traversal names, duplicates and atomicity."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import external_data_helper

from model_store.imaging import load_tensor
from model_store.ingest import TORCHVISION_MEAN, TORCHVISION_STD, add
from model_store.manifest import ModelInput
from model_store.runner import VariantRunner, top_k
from model_store.store import StoreError, open_store
from tests.store.conftest import export_tiny


def test_add_copies_hashes_and_describes(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add(tmp_path / "store", tiny_onnx, name="tiny-32-fp32", family="tinynet", resolution=32, top1=0.5)
    (variant,) = store.manifest.variants
    assert variant.top1_source == "published" and variant.top1 == 0.5
    assert variant.params == 3 * 8 * 9 + 8 + 8 * 1000 + 1000
    assert variant.macs == 16 * 16 * 8 * 27 + 8 * 1000
    assert (variant.input, variant.output_name) == (ModelInput(name="input", shape=(-1, 32, 32, 3)), "output")
    assert store.path_of(variant).name == variant.file
    assert store.verify(variant) == store.path_of(variant).read_bytes()


def test_add_without_top1_is_unknown_not_invented(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add(tmp_path, tiny_onnx, name="tiny", family="tinynet", resolution=32)
    assert store.manifest.variants[0].top1 is None
    assert store.manifest.variants[0].top1_source is None


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "Evil", "a b", ""])
def test_traversal_and_unsafe_names_are_refused(tmp_path: Path, tiny_onnx: Path, name: str) -> None:
    with pytest.raises(StoreError, match="not allowed"):
        add(tmp_path / "store", tiny_onnx, name=name, family="tinynet", resolution=32)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())
    assert not (tmp_path / "evil").exists()


def test_duplicate_name_is_refused_and_store_unchanged(tmp_path: Path, tiny_onnx: Path) -> None:
    add(tmp_path, tiny_onnx, name="tiny", family="tinynet", resolution=32)
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        add(tmp_path, tiny_onnx, name="tiny", family="tinynet", resolution=32)
    assert (tmp_path / "manifest.json").read_bytes() == before


def _external(tmp_path: Path, tiny_onnx: Path) -> Path:
    model = onnx.load(str(tiny_onnx))
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path))
    return path


def _wrong_output(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "ten.onnx", classes=10)


def _gray(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "gray.onnx", channels=1)


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    return path


def _truncated(tmp_path: Path, tiny_onnx: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(tiny_onnx.read_bytes()[:500])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, tiny: tmp / "missing.onnx", "no such file"),
        (lambda tmp, tiny: _corrupt(tmp), "not a readable ONNX"),
        (lambda tmp, tiny: _truncated(tmp, tiny), "not a readable ONNX|onnxruntime cannot"),
        (lambda tmp, tiny: _external(tmp, tiny), "external data"),
        (lambda tmp, tiny: _wrong_output(tmp), r"expected \[N, 1000\]"),
        (lambda tmp, tiny: _gray(tmp), r"expected float \[N, 3, H, W\] or uint8 \[N, H, W, 3\]"),
    ],
    ids=["missing", "corrupt", "truncated", "external-data", "wrong-output", "one-channel"],
)
def test_bad_files_are_refused_and_nothing_is_written(
    tmp_path: Path, tiny_onnx: Path, make, message: str
) -> None:
    store_dir = tmp_path / "store"
    add(store_dir, tiny_onnx, name="good", family="tinynet", resolution=32)
    before = sorted(p.name for p in store_dir.iterdir())
    with pytest.raises(StoreError, match=message):
        add(store_dir, make(tmp_path, tiny_onnx), name="bad", family="tinynet", resolution=32)
    assert sorted(p.name for p in store_dir.iterdir()) == before
    assert [v.name for v in open_store(store_dir).manifest.variants] == ["good"]


def test_resolution_the_model_cannot_take(tmp_path: Path) -> None:
    # A static-shaped export: it can only take 32x32.
    import torch

    path = tmp_path / "static.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1000)),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
    )
    with pytest.raises(StoreError, match="does not take 64x64"):
        add(tmp_path / "store", path, name="static", family="tinynet", resolution=64)


def test_cli_reports_one_line_and_fails(tmp_path: Path, tiny_onnx: Path) -> None:
    def add_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["store", "add", str(tiny_onnx), "--store", str(tmp_path), "--resolution", "32", *args]
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *command], capture_output=True, text=True, check=False
        )

    result = add_cli("--name", "../../etc/passwd", "--family", "x")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "not allowed" in result.stderr
    ok = add_cli("--name", "tiny", "--family", "tinynet", "--top1", "0.6")
    assert ok.returncode == 0, ok.stderr
    assert "added tiny" in ok.stdout
    assert json.loads((tmp_path / "manifest.json").read_text())["variants"][0]["top1"] == 0.6


def test_impossible_preprocessing_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(StoreError, match="invalid preprocessing"):
        add(tmp_path, tiny_onnx, name="tiny", family="tinynet", resolution=32, resize_shorter=16)
    assert not (tmp_path / "manifest.json").exists()


class _TakesUint8Pixels(torch.nn.Module):
    """``net`` behind its own normalisation: a model exported to take the image as it is decoded."""

    def __init__(self, net: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return self.net((x - self.mean) / self.std)


def test_a_uint8_nhwc_model_and_a_float_nchw_model_give_the_same_classes(
    tmp_path: Path, sample_dir: Path
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 1000),
    ).eval()
    float_path, uint8_path = tmp_path / "float.onnx", tmp_path / "uint8.onnx"
    export = dict(dynamo=False, input_names=["input"], output_names=["output"])
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(float_path), **export)
    wrapped = _TakesUint8Pixels(net, TORCHVISION_MEAN, TORCHVISION_STD).eval()
    torch.onnx.export(wrapped, (torch.zeros(1, 32, 32, 3, dtype=torch.uint8),), str(uint8_path), **export)

    store_dir = tmp_path / "store"
    add(store_dir, float_path, name="from-float", family="tinynet", resolution=32)
    store = add(store_dir, uint8_path, name="from-uint8", family="tinynet", resolution=32)
    runners = [VariantRunner(store.verify(v), v) for v in store.manifest.variants]
    assert [v.input for v in store.manifest.variants] == [
        ModelInput(name="input", shape=(-1, 32, 32, 3)),
        ModelInput(name="input", shape=(-1, 32, 32, 3)),
    ]
    for image in sorted(sample_dir.glob("*.JPEG"))[:10]:
        tensor = load_tensor(image.read_bytes(), store.manifest.variants[0].preprocessing, 50_000_000)
        from_float, from_uint8 = (runner.infer(tensor) for runner in runners)
        assert np.allclose(from_float, from_uint8, atol=1e-4)
        assert [c for c, _ in top_k(from_float, 5)] == [c for c, _ in top_k(from_uint8, 5)]
