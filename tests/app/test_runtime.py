"""The runtime pieces the server relies on, with a tiny real model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model_store.imaging import load_tensor, read_header
from model_store.manifest import Preprocessing
from model_store.runner import VariantRunner
from service.core.latency import decode_seconds
from service.runtime import profiler
from service.runtime.profiler import (
    decode_work,
    fit_non_negative,
    load_or_profile_decode,
    profile_decode,
    table_key,
)
from tests.app.conftest import tiny_model, tiny_variant


def test_a_runner_keeps_no_copy_of_the_model_bytes() -> None:
    """onnxruntime's wrapper would hold the file's bytes for the session's life (its size again)."""
    data = tiny_model(16)
    before = sys.getrefcount(data)
    runner = VariantRunner(data, tiny_variant("tiny-16-fp32", 16, data, 0.5))
    assert sys.getrefcount(data) == before
    logits = runner.infer(np.zeros((1, 16, 16, 3), np.uint8))
    assert logits.shape == (1000,)


def _lite(crop: int) -> Preprocessing:
    return Preprocessing(resize_shorter=crop * 8 // 7, crop=crop, mean=(127,) * 3, std=(128,) * 3)


def test_a_fit_that_wants_a_negative_coefficient_drops_that_feature() -> None:
    features = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    target = np.array([3.0, 2.0, 1.0])  # falls with the feature: least squares says -1
    assert fit_non_negative(features, target) == pytest.approx((2.0, 0.0))
    assert fit_non_negative(features, 1.0 + 2.0 * features[:, 1]) == pytest.approx((1.0, 2.0))


def test_the_decode_cost_fitted_on_synthetic_photos_prices_real_ones(sample_dir: Path) -> None:
    """Start-up fits each format's decode cost on synthetic photos; it must price real photos at
    both ends of the store's sizes (within a factor of ten: a bound on the model, not on this
    machine's speed; whether the fit finds a fixed part depends on the machine's load then)."""
    small, large = _lite(128), _lite(260)
    costs = profile_decode({small, large})
    assert set(costs) == {"JPEG", "PNG", "WEBP"}
    assert all(c >= 0.0 for cost in costs.values() for c in cost)
    for path in sorted(sample_dir.iterdir())[::100]:
        data = path.read_bytes()
        header = read_header(data, 1 << 30)
        for preprocessing in (small, large):
            started = time.perf_counter()
            load_tensor(data, preprocessing, 1 << 30)
            seconds = time.perf_counter() - started
            predicted = decode_seconds(costs["JPEG"], decode_work(header, preprocessing))
            assert 0.1 < seconds / predicted < 10.0, (path.name, preprocessing.crop, seconds, predicted)


def test_a_restart_reuses_this_machines_decode_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measuring them takes seconds, the longest part of a start with a cached latency table."""
    key = table_key(1)
    first = load_or_profile_decode({_lite(128), _lite(224)}, cache_dir=tmp_path, key=key)

    def never(*_: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(profiler, "profile_decode", never)
    assert load_or_profile_decode({_lite(224), _lite(128)}, cache_dir=tmp_path, key=key) == first
    # Another preprocessing (or another machine, decoder...) is measured anew.
    with pytest.raises(AssertionError, match="measured again"):
        load_or_profile_decode({_lite(128), _lite(260)}, cache_dir=tmp_path, key=key)
