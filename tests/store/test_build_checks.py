"""The builder's checks: exports that differ from PyTorch fail; int8 agreement is recorded."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.build.builder import log_int8_agreement, share_one_file
from model_store.build.export import INPUT_NAME, OUTPUT_NAME, parity_error
from model_store.build.recipes import LADDER
from model_store.evaluate import Evaluation, labelled_images, record
from model_store.image_input import wrap_file
from model_store.manifest import Manifest
from model_store.store import Store
from tests.app.conftest import tiny_model, tiny_variant
from tests.store.conftest import PRE32, export_tiny
from tests.unit.test_manifest import variant


def _export(model: torch.nn.Module, path: Path) -> Path:
    """Export as the builder does: float NCHW from torch, then the served uint8 input in front."""
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    wrap_file(path, path, PRE32, 32)
    return path


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1000)
    ).eval()


def test_parity_passes_for_a_faithful_export_and_fails_for_another_model(tmp_path: Path) -> None:
    model = _tiny()
    images = [np.random.default_rng(i).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for i in range(3)]
    assert parity_error(model, _export(model, tmp_path / "same.onnx"), images, PRE32) < 1e-4
    other = _tiny()
    with torch.no_grad():
        other[3].bias += 0.01
    assert parity_error(model, _export(other, tmp_path / "other.onnx"), images, PRE32) > 1e-3
    # The check covers the input prefix too: a graph normalising differently fails it.
    shifted = PRE32.model_copy(update={"mean": (100.0, 127.0, 127.0)})
    assert parity_error(model, _export(model, tmp_path / "same.onnx"), images, shifted) > 1e-3


def _pair(agreeing: int) -> tuple[Manifest, dict[str, tuple[int, ...]]]:
    fp32 = variant(name="t-32-fp32", resolution=32, preprocessing=PRE32)
    int8 = variant(name="t-32-int8", resolution=32, precision="int8", preprocessing=PRE32)
    truth = tuple(range(100))
    return Manifest(variants=(fp32, int8)), {
        "t-32-fp32": truth,
        "t-32-int8": truth[:agreeing] + (999,) * (100 - agreeing),
    }


@pytest.mark.parametrize(("agreeing", "below"), [(100, False), (95, False), (94, True)])
def test_int8_agreement_is_logged_and_nothing_is_dropped(
    agreeing: int, below: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool keeps every int8 variant: how often it agrees with fp32 is this CPU's figure."""
    manifest, predictions = _pair(agreeing)
    with caplog.at_level("INFO", logger="model_store.build.builder"):
        log_int8_agreement(manifest, predictions)
    assert f"t-32-int8: top-1 agrees with t-32-fp32 on {agreeing:.1f}% of 100 images" in caplog.text
    assert ("kept in the pool" in caplog.text) is below


def test_record_derives_from_the_published_base_and_keeps_published() -> None:
    base = variant(name="b-224-fp32", top1=0.75, top1_source="published")
    low = variant(
        name="b-160-fp32",
        resolution=160,
        preprocessing=base.preprocessing.model_copy(update={"crop": 160, "resize_shorter": 192}),
    )
    lone = variant(name="x-224-fp32", family="other")
    manifest = record(
        Manifest(variants=(base, low, lone)),
        "sample",
        [
            Evaluation("b-224-fp32", 0.88, (), ()),
            Evaluation("b-160-fp32", 0.80, (), ()),
            Evaluation("x-224-fp32", 0.9, (), ()),
        ],
    )
    assert manifest.variant("b-224-fp32").top1 == 0.75
    assert manifest.variant("b-224-fp32").top1_source == "published"
    derived = manifest.variant("b-160-fp32")
    assert (derived.top1, derived.top1_source, derived.top1_base, derived.top1_dataset) == (
        pytest.approx(0.67),
        "derived",
        "b-224-fp32",
        "sample",
    )
    measured = manifest.variant("x-224-fp32")
    assert (measured.top1, measured.top1_source) == (0.9, "measured")


def test_tiny_export_helper_is_real(tmp_path: Path) -> None:
    # The store tests' stand-in for a user's model must itself load and run.
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_tiny(tmp_path / "t.onnx")))
    (out,) = session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})
    assert out.shape == (2, 1000)


def test_resolutions_share_a_file_only_where_their_logits_match(tmp_path: Path, sample_dir: Path) -> None:
    # 16 and 32 px: one network (the same weights); 24 px: another one.
    models = {16: tiny_model(16, seed=1), 24: tiny_model(24, seed=2), 32: tiny_model(32, seed=1)}
    variants = []
    for resolution, data in models.items():
        name = f"tiny-{resolution}-fp32"
        (tmp_path / f"{name}.onnx").write_bytes(data)
        variants.append(tiny_variant(name, resolution, data, top1=0.5))
    shared = share_one_file(LADDER[0], variants, tmp_path, labelled_images(sample_dir)[:8])
    files = {v.resolution: v.file for v in shared}
    assert files[16] == files[32] != "tiny-32-fp32.onnx"
    assert files[24] == "tiny-24-fp32.onnx"
    store = Store(tmp_path, Manifest()).write(Manifest(variants=tuple(shared)))
    for v in shared:
        store.verify(v)
