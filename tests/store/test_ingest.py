"""``edgefit store add``: ladders, labels, presets, int8, validation, atomicity."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, external_data_helper, helper

from model_store.imaging import load_tensor
from model_store.manifest import ModelInput
from model_store.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from model_store.runner import VariantRunner, top_k
from model_store.store import StoreError, open_store
from tests.store.conftest import add_tiny, export_tiny


def test_add_copies_hashes_and_describes(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add_tiny(tmp_path / "store", tiny_onnx, top1=0.5)
    (variant,) = store.manifest.variants
    assert variant.name == "tiny-32-fp32" and variant.labels == "imagenet-1k"
    assert variant.top1_source == "published" and variant.top1 == 0.5
    assert variant.params == 3 * 8 * 9 + 8 + 8 * 1000 + 1000
    assert variant.macs == 16 * 16 * 8 * 27 + 8 * 1000
    assert (variant.input, variant.output_name) == (ModelInput(name="input", shape=(-1, 32, 32, 3)), "output")
    assert store.path_of(variant).name == variant.file
    assert store.verify(variant) == store.path_of(variant).read_bytes()


def test_add_without_top1_is_unknown_not_invented(tmp_path: Path, tiny_onnx: Path) -> None:
    store = add_tiny(tmp_path, tiny_onnx)
    assert store.manifest.variants[0].top1 is None
    assert store.manifest.variants[0].top1_source is None


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "Evil", "a b", ""])
def test_traversal_and_unsafe_names_are_refused(tmp_path: Path, tiny_onnx: Path, name: str) -> None:
    with pytest.raises(StoreError, match="not allowed"):
        add_tiny(tmp_path / "store", tiny_onnx, name)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())
    assert not (tmp_path / "evil").exists()


def test_duplicate_name_is_refused_and_store_unchanged(tmp_path: Path, tiny_onnx: Path) -> None:
    add_tiny(tmp_path, tiny_onnx)
    before = (tmp_path / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        add_tiny(tmp_path, tiny_onnx)
    assert (tmp_path / "manifest.json").read_bytes() == before


def _external(tmp_path: Path, tiny_onnx: Path) -> Path:
    model = onnx.load(str(tiny_onnx))
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path))
    return path


def _ten_classes(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "ten.onnx", classes=10)


def _gray(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "gray.onnx", channels=1)


def _graph(tmp_path: Path, inputs: list, output: onnx.ValueInfoProto, nodes: list, weights=()) -> Path:
    path = tmp_path / "graph.onnx"
    graph = helper.make_graph(nodes, "user", inputs, [output], initializer=list(weights))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _no_input(tmp_path: Path) -> Path:
    scores = helper.make_tensor("scores", TensorProto.FLOAT, [1, 1000], np.zeros(1000, np.float32))
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1000])
    return _graph(tmp_path, [], out, [helper.make_node("Constant", [], ["out"], value=scores)])


def _feature_map(tmp_path: Path) -> Path:
    # Scores per pixel, [N, 1000, H, W]: a segmentation-like head, not a classifier.
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1000, 32, 32])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1000, 3, 1, 1], np.zeros(3000, np.float32))
    return _graph(tmp_path, [image], out, [helper.make_node("Conv", ["x", "w"], ["out"])], [weight])


def _token_ids(tmp_path: Path) -> Path:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 128])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 128])
    return _graph(tmp_path, [ids], out, [helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)])


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
        (lambda tmp, tiny: _no_input(tmp), "expected one image input and one output, found 0 inputs"),
        (lambda tmp, tiny: _feature_map(tmp), r"shape \['n', 1000, 32, 32\]; expected \[N, classes\]"),
        (lambda tmp, tiny: _ten_classes(tmp), "output has 10 classes but the labels name 1000"),
        (
            lambda tmp, tiny: _gray(tmp),
            r"not an image: expected float \[N, 3, H, W\] or uint8 \[N, H, W, 3\]",
        ),
        (lambda tmp, tiny: _token_ids(tmp), r"input ids is int64 \['n', 128\], not an image"),
    ],
    ids=[
        "missing",
        "corrupt",
        "truncated",
        "external-data",
        "no-input",
        "output-rank",
        "class-count",
        "one-channel",
        "not-an-image",
    ],
)
def test_bad_files_are_refused_and_nothing_is_written(
    tmp_path: Path, tiny_onnx: Path, make, message: str
) -> None:
    store_dir = tmp_path / "store"
    add_tiny(store_dir, tiny_onnx, "good")
    before = sorted(p.name for p in store_dir.iterdir())
    with pytest.raises(StoreError, match=message) as refused:
        add_tiny(store_dir, make(tmp_path, tiny_onnx), "bad")
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in store_dir.iterdir()) == before
    assert [v.name for v in open_store(store_dir).manifest.variants] == ["good-32-fp32"]


def test_resolution_the_model_cannot_take(tmp_path: Path) -> None:
    # A static-shaped export: it can only take 32x32.
    path = tmp_path / "static.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1000)),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
    )
    with pytest.raises(StoreError, match="does not take 64x64; export with dynamic height and width"):
        add_tiny(tmp_path / "store", path, "static", resolutions=(32, 64))
    assert not (tmp_path / "store" / "manifest.json").exists()


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
    assert "added tiny-32-fp32" in ok.stdout
    assert json.loads((tmp_path / "manifest.json").read_text())["variants"][0]["top1"] == 0.6


def test_impossible_preprocessing_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    squeezed = PRESETS["torchvision"].with_crop_ratio(16, 32)
    with pytest.raises(StoreError, match=r"invalid preprocessing at 32: .*crop must not exceed"):
        add_tiny(tmp_path, tiny_onnx, preprocess=squeezed)
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
    wrapped = _TakesUint8Pixels(net, IMAGENET_MEAN, IMAGENET_STD).eval()
    torch.onnx.export(wrapped, (torch.zeros(1, 32, 32, 3, dtype=torch.uint8),), str(uint8_path), **export)

    store_dir = tmp_path / "store"
    add_tiny(store_dir, float_path, "from-float")
    store = add_tiny(store_dir, uint8_path, "from-uint8")
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


def _links(directory: Path, images: list[Path], classes: list[str] | None = None) -> Path:
    """A folder of links to ``images``: flat, or an ImageFolder tree cycling through ``classes``."""
    for i, image in enumerate(images):
        folder = directory / classes[i % len(classes)] if classes else directory
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.name).symlink_to(image.resolve())
    return directory


def test_a_dynamic_model_becomes_a_ladder_with_its_labels_and_measured_accuracy(
    tmp_path: Path, sample_dir: Path
) -> None:
    source = export_tiny(tmp_path / "dyn.onnx", classes=10, dynamic=True)
    names = [f"part-{i}" for i in range(10)]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    images = sorted(sample_dir.glob("*.JPEG"))
    val = _links(tmp_path / "val", images[:30], names)
    store = add_tiny(
        tmp_path / "store",
        source,
        resolutions=(32, 48),
        precisions=("fp32", "int8"),
        labels_file=labels,
        calibration_dir=_links(tmp_path / "calibration", images[100:108]),
        evaluate_dir=val,
        min_agreement=0.5,
    )
    variants = {v.name: v for v in store.manifest.variants}
    assert set(variants) == {"tiny-32-fp32", "tiny-32-int8", "tiny-48-fp32", "tiny-48-int8"}
    assert variants["tiny-48-fp32"].macs > variants["tiny-32-fp32"].macs
    assert variants["tiny-48-fp32"].preprocessing.resize_shorter == 54  # 48 * 256 / 224
    for variant in variants.values():
        assert store.labels(variant) == tuple(names)
        assert (variant.top1_source, variant.top1_dataset) == ("measured", "val")
        # The recorded figure is what the stored file gives on those images, as served.
        runner = VariantRunner(store.verify(variant), variant)
        right = 0
        for i, image in enumerate(images[:30]):
            tensor = load_tensor(image.read_bytes(), variant.preprocessing, 50_000_000)
            right += top_k(runner.infer(tensor), 1)[0][0] == i % 10
        assert variant.top1 == pytest.approx(right / 30, abs=1e-4)


def test_int8_needs_calibration_images(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(StoreError, match="int8 needs --calibration DIR"):
        add_tiny(tmp_path, tiny_onnx, precisions=("fp32", "int8"))
    assert not (tmp_path / "manifest.json").exists()


def test_labels_the_model_does_not_have_are_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    with pytest.raises(StoreError, match="output has 1000 classes but the labels name 2"):
        add_tiny(tmp_path / "store", tiny_onnx, labels_file=labels)
    labels.write_text("cat\n\ndog\n")
    with pytest.raises(StoreError, match="line 2 is blank"):
        add_tiny(tmp_path / "store", tiny_onnx, labels_file=labels)


def test_cli_presets_and_explicit_flags(tmp_path: Path) -> None:
    source = export_tiny(tmp_path / "dyn.onnx", dynamic=True)

    def add_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["store", "add", str(source), "--store", str(tmp_path / "store"), "--family", "t", *args]
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *command], capture_output=True, text=True, check=False
        )

    lonely = add_cli("--name", "a", "--resolutions", "32,48", "--resize", "256")
    assert lonely.returncode == 1 and "give --resize R --crop C" in lonely.stderr
    ok = add_cli(
        "--name", "b", "--resolutions", "32,48", "--preprocess", "timm", "--mean", "127,127,127",
        "--resize", "8", "--crop", "7",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    lite = add_cli("--name", "c", "--resolution", "32", "--preprocess", "lite")
    assert lite.returncode == 0, lite.stderr
    variants = {
        v["name"]: v["preprocessing"]
        for v in json.loads((tmp_path / "store/manifest.json").read_text())["variants"]
    }
    assert variants["b-48-fp32"] == {
        "resize_shorter": 54,
        "crop": 48,
        "interpolation": "bicubic",
        "mean": [127.0, 127.0, 127.0],
        "std": list(IMAGENET_STD),
        "channel_order": "RGB",
    }
    assert (variants["c-32-fp32"]["resize_shorter"], variants["c-32-fp32"]["mean"]) == (64, [127.0] * 3)


def test_int8_only_and_an_already_quantised_file(tmp_path: Path, tiny_onnx: Path, sample_dir: Path) -> None:
    calibration = _links(tmp_path / "calibration", sorted(sample_dir.glob("*.JPEG"))[:8])
    store = add_tiny(
        tmp_path / "a", tiny_onnx, precisions=("int8",), calibration_dir=calibration, min_agreement=0.5
    )
    # The fp32 twin was built for the gate only.
    (int8,) = store.manifest.variants
    assert (int8.name, int8.precision) == ("tiny-32-int8", "int8")
    quantised = store.path_of(int8)
    with pytest.raises(StoreError, match="already quantised: add it with --precisions int8"):
        add_tiny(tmp_path / "b", quantised)
    again = add_tiny(tmp_path / "b", quantised, precisions=("int8",))
    assert again.manifest.variants[0].sha256 == int8.sha256  # stored as it is, no calibration needed
