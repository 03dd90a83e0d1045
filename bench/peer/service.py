"""The peer for bench/: one edgefit store variant served by BentoML with its default settings.

Same ONNX file, same preprocessing (``model_store.imaging.load_tensor``, imported from the repo
through PYTHONPATH), same intra-op threads as edgefit's runner; everything about serving
(workers, concurrency, request parsing) is BentoML's default. The image arrives the way BentoML
users send files: multipart/form-data, field ``file``.

Environment: PEER_STORE_DIR, PEER_VARIANT, PEER_THREADS.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort

from model_store.imaging import load_tensor
from model_store.store import open_store

MAX_PIXELS = 50_000_000


@bentoml.service
class Classifier:
    def __init__(self) -> None:
        store = open_store(Path(os.environ["PEER_STORE_DIR"]))
        self.variant = store.manifest.variant(os.environ["PEER_VARIANT"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "1"))
        weights = store.verify_weights(self.variant)
        if weights is not None:  # the variant keeps its tensors in a weights file of the store
            name, data = weights
            options.add_external_initializers_from_files_in_memory([name], [data], [len(data)])
        self.session = ort.InferenceSession(
            store.verify(self.variant), options, providers=["CPUExecutionProvider"]
        )

    @bentoml.api
    def classify(self, file: Path) -> dict[str, object]:
        tensor = load_tensor(file.read_bytes(), self.variant.preprocessing, MAX_PIXELS)
        logits = self.session.run([self.variant.output_name], {self.variant.input.name: tensor})[0][0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:5]
        return {
            "model": self.variant.name,
            "predictions": [{"class_id": int(i), "score": float(probabilities[i])} for i in best],
        }
