"""Each variant's answers on the labelled images, kept between store commands.

``edgefit store build`` classifies the whole sample with every variant it writes and ``store
specialize`` the held-out half with every subnet; ``store cascades`` then needs every variant's
answers on the whole sample. Kept here, it classifies only what no command before it did
(``make setup`` runs the three in turn: a second pass over the pool took minutes).

An answer is keyed by what decides it: the variant's files (sha256), its preprocessing, the
code that decodes and runs it, the library versions, and the image (path, size, modification
time). Only ``store cascades`` reads answers back; the figures a manifest records are always
measured afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnxruntime
import PIL

from model_store import imaging, runner
from model_store.evaluate import Evaluation, LabelledImage, evaluate
from model_store.manifest import Variant
from model_store.store import Store

log = logging.getLogger(__name__)

Answer = tuple[int, float]  # (top-1 class, its softmax score)


@cache
def _code_digest() -> str:
    """The decoding and inference code: changing it changes answers without changing a file."""
    digest = hashlib.sha256(f"{onnxruntime.__version__} {PIL.__version__}".encode())
    for module in (imaging, runner):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def _image_key(image: LabelledImage) -> str:
    stat = image.path.stat()
    return hashlib.sha256(f"{image.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[
        :24
    ]


@dataclass(frozen=True)
class AnswerCache:
    """Answers by variant, one JSON file each, under ``root``. Unreadable or unwritable: as if
    empty (a cache, never a reason to fail)."""

    root: Path

    @classmethod
    def default(cls) -> AnswerCache:
        """``$XDG_CACHE_HOME/edgefit/answers`` (``~/.cache`` without it), beside the server's cache."""
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return cls(Path(base) / "edgefit" / "answers")

    def _file(self, variant: Variant) -> Path:
        key = json.dumps(
            [
                variant.sha256,
                variant.weights.sha256 if variant.weights else None,
                variant.preprocessing.model_dump(mode="json"),
                _code_digest(),
            ]
        )
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _book(self, variant: Variant) -> dict[str, list[float]]:
        try:
            book: dict[str, list[float]] = json.loads(self._file(variant).read_text())
        except (OSError, ValueError):
            return {}
        return book

    def recall(self, variant: Variant, images: Sequence[LabelledImage]) -> list[Answer | None]:
        """The variant's kept answer for each image, None where there is none."""
        book = self._book(variant)
        found = (book.get(_image_key(image)) for image in images)
        return [None if a is None else (int(a[0]), float(a[1])) for a in found]

    def remember(self, variant: Variant, images: Sequence[LabelledImage], result: Evaluation) -> None:
        """Keep ``result``, the variant's answers on ``images``."""
        book = self._book(variant)
        for image, label, score in zip(images, result.predictions, result.top_scores, strict=True):
            book[_image_key(image)] = [label, score]
        path = self._file(variant)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(book))
            temporary.replace(path)
        except OSError as exc:
            log.warning("answers of %s not kept in %s: %s", variant.name, self.root, exc.strerror)


def evaluate_remembered(
    cache: AnswerCache,
    store: Store,
    variants: Sequence[Variant],
    images: Sequence[LabelledImage],
    progress: Callable[[int], None] | None = None,
) -> list[Evaluation]:
    """``evaluate``'s results, classifying only the images ``cache`` holds no answer for (and
    keeping those answers)."""
    known = {v.name: cache.recall(v, images) for v in variants}
    if progress:
        progress(sum(a is not None for answers in known.values() for a in answers))
    # Variants missing the same images (a subnet scored on the held-out half) run together.
    missing: dict[tuple[int, ...], list[Variant]] = {}
    for v in variants:
        gaps = tuple(i for i, a in enumerate(known[v.name]) if a is None)
        if gaps:
            missing.setdefault(gaps, []).append(v)
    for gaps, members in missing.items():
        subset = [images[i] for i in gaps]
        for member, result in zip(members, evaluate(store, members, subset, progress=progress), strict=True):
            cache.remember(member, subset, result)
            for i, label, score in zip(gaps, result.predictions, result.top_scores, strict=True):
                known[member.name][i] = (label, score)
    truth = [image.class_id for image in images]
    results = []
    for v in variants:
        answers = [a for a in known[v.name] if a is not None]
        predictions = tuple(label for label, _ in answers)
        results.append(
            Evaluation(
                variant=v.name,
                top1=sum(p == t for p, t in zip(predictions, truth, strict=True)) / len(truth),
                predictions=predictions,
                top_scores=tuple(score for _, score in answers),
            )
        )
    return results
