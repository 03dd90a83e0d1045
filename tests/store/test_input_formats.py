"""One serving path for every model: a user's float NCHW model, wrapped by ``store add`` to take
the served ``uint8`` NHWC crop, answers what the original model answers for the same image."""

from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_store.evaluate import MAX_PIXELS
from model_store.imaging import load_tensor
from model_store.runner import VariantRunner, top_k
from tests.store.conftest import add_tiny, export_tiny


def test_uint8_hwc_and_float_nchw_models_give_the_same_classes(tmp_path: Path, sample_dir: Path) -> None:
    source = export_tiny(tmp_path / "user.onnx")
    store = add_tiny(tmp_path / "store", source)
    (variant,) = store.manifest.variants
    assert (variant.input.dtype, variant.input.layout) == ("uint8", "NHWC")
    wrapped = VariantRunner(store.verify(variant), variant)
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    prep = variant.preprocessing
    order = [0, 1, 2] if prep.channel_order == "RGB" else [2, 1, 0]
    for path in sorted(sample_dir.iterdir())[::50]:
        crop = load_tensor(path.read_bytes(), prep, MAX_PIXELS)  # uint8 [1, H, W, 3], RGB
        floats = (crop[..., order].astype(np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
        logits = original.run(None, {"input": floats.transpose(0, 3, 1, 2)})[0][0]
        served = wrapped.infer(crop)
        assert [c for c, _ in top_k(served, 5)] == [c for c, _ in top_k(logits, 5)], path.name
        np.testing.assert_allclose(served, logits, rtol=1e-4, atol=1e-4)
