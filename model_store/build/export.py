"""PyTorch -> ONNX for the pretrained EfficientNet-Lite checkpoints, checked against PyTorch.

The only module (with the rest of ``model_store.build``) that imports torch.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

from model_store.build.recipes import Recipe
from model_store.manifest import Preprocessing
from model_store.runner import session_options

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def load_pretrained(recipe: Recipe, resolution: int) -> torch.nn.Module:
    """The checkpoint with TF-style static 'same' padding computed for ``resolution``."""
    package = importlib.import_module(recipe.weights_package)
    model_file = next(getattr(package, name) for name in dir(package) if name.endswith("ModelFile"))
    model: torch.nn.Module = EfficientNet.from_pretrained(
        recipe.checkpoint, weights_path=model_file.get_model_file_path(), image_size=resolution
    )
    model.eval()
    return model


def export_onnx(model: torch.nn.Module, resolution: int, path: Path) -> None:
    example = torch.zeros(1, 3, resolution, resolution)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its own deprecation; it is still the one that
        # exports these static-padding graphs exactly and in about a second.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def parity_error(
    model: torch.nn.Module, path: Path, images: Sequence[np.ndarray], preprocessing: Preprocessing
) -> float:
    """Largest absolute logit difference between PyTorch and onnxruntime on ``images``.

    ``path`` takes the ``uint8 [1, H, W, 3]`` images as served (``model_store.image_input``);
    PyTorch gets the normalised NCHW tensor computed here, independently of the graph, so the
    check covers the export and the input prefix together.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    worst = 0.0
    with torch.no_grad():
        for image in images:
            pixels = image.astype(np.float32)
            if preprocessing.channel_order == "BGR":
                pixels = pixels[..., ::-1]
            reference = np.ascontiguousarray(((pixels - mean) / std).transpose(0, 3, 1, 2))
            expected = model(torch.from_numpy(reference)).numpy()
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: image})
            worst = max(worst, float(np.max(np.abs(expected - actual))))
    return worst
