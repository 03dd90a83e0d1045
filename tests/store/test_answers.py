"""Answers kept between store commands: taken back only for the same files, preprocessing and
images, and exactly what evaluating again gives."""

from pathlib import Path

import pytest

from model_store.answers import AnswerCache, evaluate_remembered
from model_store.evaluate import evaluate, held_out_half, labelled_images
from model_store.manifest import Manifest
from model_store.store import Store
from tests.app.conftest import tiny_model, tiny_variant


@pytest.fixture
def store(tmp_path: Path) -> Store:
    variants = []
    for name, seed in (("tiny-32-fp32", 1), ("other-32-fp32", 2)):
        data = tiny_model(32, seed)
        (tmp_path / f"{name}.onnx").write_bytes(data)
        variants.append(tiny_variant(name, 32, data, top1=0.5))
    return Store(tmp_path, Manifest()).write(Manifest(variants=tuple(variants)))


def test_kept_answers_are_taken_back_and_only_missing_ones_are_computed(
    store: Store, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = labelled_images(sample_dir)[:12]
    cache = AnswerCache(tmp_path / "answers")
    tiny, other = store.manifest.variants
    fresh = evaluate(store, [tiny, other], images)
    # One variant known on all images, the other on the odd half (as `store specialize` keeps).
    cache.remember(tiny, images, fresh[0])
    half = held_out_half(images)
    (other_half,) = evaluate(store, [other], half)
    cache.remember(other, half, other_half)
    assert cache.recall(other, images) == [
        None if i % 2 == 0 else (p, s)
        for i, (p, s) in enumerate(zip(fresh[1].predictions, fresh[1].top_scores, strict=True))
    ]

    classified = []
    real = evaluate

    def counting(store, variants, images, **kwargs):  # type: ignore[no-untyped-def]
        classified.append(([v.name for v in variants], len(images)))
        return real(store, variants, images, **kwargs)

    monkeypatch.setattr("model_store.answers.evaluate", counting)
    done: list[int] = []
    assert evaluate_remembered(cache, store, [tiny, other], images, done.append) == fresh
    assert classified == [(["other-32-fp32"], 6)] and sum(done) == 2 * len(images)
    # Now every answer is kept: nothing runs.
    assert evaluate_remembered(cache, store, [tiny, other], images) == fresh
    assert len(classified) == 1


def test_another_file_or_preprocessing_finds_nothing(store: Store, sample_dir: Path, tmp_path: Path) -> None:
    images = labelled_images(sample_dir)[:4]
    cache = AnswerCache(tmp_path / "answers")
    tiny = store.manifest.variants[0]
    cache.remember(tiny, images, evaluate(store, [tiny], images)[0])
    assert None not in cache.recall(tiny, images)
    retrained = tiny.model_copy(update={"sha256": "0" * 64})
    cropped = tiny.model_copy(
        update={"preprocessing": tiny.preprocessing.model_copy(update={"resize_shorter": 40})}
    )
    for changed in (retrained, cropped):
        assert cache.recall(changed, images) == [None] * len(images)


def test_an_unwritable_cache_is_no_cache(store: Store, sample_dir: Path, tmp_path: Path) -> None:
    images = labelled_images(sample_dir)[:4]
    (tmp_path / "file").write_text("not a directory")
    cache = AnswerCache(tmp_path / "file" / "answers")
    tiny = store.manifest.variants[0]
    assert evaluate_remembered(cache, store, [tiny], images) == evaluate(store, [tiny], images)
    assert cache.recall(tiny, images) == [None] * len(images)
