"""Top-1 accuracy of store variants on a labelled image folder, through the serving code path.

Accepted layouts: files named ``<wnid>_*.<ext>`` in one folder (like ``imagenet-sample``), or an
ImageFolder tree with one ``<wnid>/`` folder per class.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from model_store.imaging import load_tensor
from model_store.labels import imagenet_classes
from model_store.manifest import Manifest, Preprocessing, Variant
from model_store.runner import VariantRunner, top_k
from model_store.store import Store, StoreError

T = TypeVar("T")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".webp"}
_WNID = re.compile(r"^n\d{8}")
# Evaluation reads trusted local files, but keeps the serving default all the same.
MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    class_id: int


@dataclass(frozen=True)
class Evaluation:
    variant: str
    top1: float
    predictions: tuple[int, ...]
    # Each image's top softmax score: how sure the variant was of its prediction.
    top_scores: tuple[float, ...]


def labelled_images(directory: Path, classes: Sequence[str] | None = None) -> list[LabelledImage]:
    """The labelled images under ``directory``, sorted by path. Raises ``StoreError``.

    With ``classes`` (a label file's labels) an image's class is the one its folder, or for a
    file directly in ``directory`` the part of its name before the first ``_``, is named after;
    without, the ImageNet wnid its folder or file name starts with.
    """
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a directory")
    if classes is None:
        index = {wnid: i for i, (wnid, _) in enumerate(imagenet_classes())}
    else:
        index = {label: i for i, label in enumerate(classes)}
    found: list[LabelledImage] = []
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        # ImageFolder: the class folder names the label; flat: the file name does.
        label = path.parent.name if path.parent != directory else path.name
        if classes is None:
            match = _WNID.match(label)
            key = match.group() if match else None
        else:
            key = label if path.parent != directory else label.split("_", 1)[0]
        if key in index:
            found.append(LabelledImage(path, index[key]))
    if not found:
        expected = "<wnid>_*.JPEG files or <wnid>/ folders" if classes is None else "<label>/ folders"
        raise StoreError(f"no labelled images in {directory}: expected {expected}")
    return found


def search_half(images: Sequence[T]) -> list[T]:
    """The images (or their answers) a search may look at: even positions (``edgefit store
    specialize``, ``edgefit store cascades``)."""
    return list(images[0::2])


def held_out_half(images: Sequence[T]) -> list[T]:
    """The images (or their answers) recorded accuracy comes from after a search: odd positions,
    never searched on."""
    return list(images[1::2])


def held_out_dataset(dataset: str) -> str:
    """The name the manifest gives the held-out half of ``dataset``."""
    return f"{dataset}/odd-positions"


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def stage_progress(report: Progress, stage: str, total: int) -> Callable[[int], None]:
    """A ``progress`` for :func:`evaluate` that reports its running count as ``stage`` of ``total``."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        report(stage, done, total)

    return advance


def evaluate(
    store: Store,
    variants: Sequence[Variant],
    images: Sequence[LabelledImage],
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[Evaluation]:
    """Classify every image with every variant; ``progress(n)`` is called as images finish.

    Images are decoded once per preprocessing and shared by the variants that use it
    (an fp32 variant and its int8 twin).
    """
    groups: dict[Preprocessing, list[Variant]] = {}
    for variant in variants:
        groups.setdefault(variant.preprocessing, []).append(variant)
    runners = {v.name: VariantRunner.from_store(store, v) for v in variants}
    answers: dict[str, list[tuple[int, float]]] = {v.name: [] for v in variants}

    def classify(preprocessing: Preprocessing, image: LabelledImage) -> dict[str, tuple[int, float]]:
        tensor = load_tensor(image.path.read_bytes(), preprocessing, MAX_PIXELS)
        return {v.name: top_k(runners[v.name].infer(tensor), 1)[0] for v in groups[preprocessing]}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for preprocessing, members in groups.items():
            for result in pool.map(classify, [preprocessing] * len(images), images):
                for name, answer in result.items():
                    answers[name].append(answer)
                if progress:
                    progress(len(members))
    truth = [image.class_id for image in images]
    return [
        Evaluation(
            variant=v.name,
            top1=sum(c == t for (c, _), t in zip(answers[v.name], truth, strict=True)) / len(truth),
            predictions=tuple(c for c, _ in answers[v.name]),
            top_scores=tuple(s for _, s in answers[v.name]),
        )
        for v in variants
    ]


def _base_of(manifest: Manifest, variant: Variant) -> Variant | None:
    """The variant whose published top1 this one's figure is derived from, if any."""
    if variant.top1_base is not None:
        return manifest.variant(variant.top1_base)
    published = [v for v in manifest.variants if v.family == variant.family and v.top1_source == "published"]
    # Prefer the full-precision, native-resolution checkpoint the figure was published for.
    published.sort(key=lambda v: (v.precision != "fp32", -v.resolution))
    return published[0] if published else None


def record(manifest: Manifest, dataset: str, results: Iterable[Evaluation]) -> Manifest:
    """Return the manifest with these measurements recorded and every ``top1`` re-derived.

    A ``published`` figure is kept. A variant whose family has a published base that was measured
    on the same data set gets ``derived`` = published base + (this − base), both measured here;
    otherwise it gets the ``measured`` figure itself.
    """
    updated = {
        r.variant: manifest.variant(r.variant).model_copy(
            update={"evaluations": {**manifest.variant(r.variant).evaluations, dataset: r.top1}}
        )
        for r in results
    }
    manifest = manifest.replace(*updated.values())
    rederived = []
    for variant in (manifest.variant(name) for name in updated):
        if variant.top1_source == "published":
            continue
        base = _base_of(manifest, variant)
        accuracy = variant.evaluations[dataset]
        if base is not None and base.top1 is not None and dataset in base.evaluations:
            top1 = base.top1 + accuracy - base.evaluations[dataset]
            fields: dict[str, str | None] = {"top1_source": "derived", "top1_base": base.name}
        else:
            top1, fields = accuracy, {"top1_source": "measured", "top1_base": None}
        rederived.append(
            variant.model_copy(
                update={"top1": round(min(max(top1, 0.0), 1.0), 4), "top1_dataset": dataset, **fields}
            )
        )
    return Manifest.model_validate(manifest.replace(*rederived).model_dump())
