"""The runtime pieces the server relies on, with a tiny real model."""

from __future__ import annotations

import sys

import numpy as np

from model_store.runner import VariantRunner
from tests.app.conftest import tiny_model, tiny_variant


def test_a_runner_keeps_no_copy_of_the_model_bytes() -> None:
    """onnxruntime's wrapper would hold the file's bytes for the session's life (its size again)."""
    data = tiny_model(16)
    before = sys.getrefcount(data)
    runner = VariantRunner(data, tiny_variant("tiny-16-fp32", 16, data, 0.5))
    assert sys.getrefcount(data) == before
    logits = runner.infer(np.zeros((1, 16, 16, 3), np.uint8))
    assert logits.shape == (1000,)
