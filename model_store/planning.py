"""The variants' answers that cascades are planned from: recorded into the store by ``edgefit
store cascades``, planned from by each server among the variants it serves.

Every variant classifies the labelled sample once (``model_store.evaluate``, the serving path;
answers that ``store build`` and ``store specialize`` kept are taken as they are,
``model_store.answers``), and its top score and correctness per image go into one file of the
store. Which plans pay off depends on the device: the variants it serves (its frontier) and their
latencies there. A server therefore plans at start (``plans``): ``model_store.cascades`` chooses
from the answers (thresholds from the search half, figures from the held-out half) at the
server's own profiled latencies. Plans are measured, not assumed: a badly chosen pair is worse
than a single variant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_store.answers import AnswerCache, evaluate_remembered
from model_store.cascades import Answers, Plan, Scored, plan_cascades
from model_store.evaluate import (
    Progress,
    held_out_half,
    labelled_images,
    search_half,
    stage_progress,
)
from model_store.manifest import Answers as AnswersFile
from model_store.manifest import Manifest
from model_store.store import Store, StoreError, open_store

# Scores are kept to this many decimals: far finer than the thresholds' grid.
SCORE_DECIMALS = 4


def record_answers(
    root: Path, images_dir: Path, answers: AnswerCache, report: Progress | None = None
) -> tuple[Store, AnswersFile]:
    """Every variant's answers on the labelled images in ``images_dir``, written into the store at
    ``root`` (``write_answers``); ``answers`` holds those earlier store commands kept (only the
    rest are classified), ``report`` follows them. Raises ``StoreError``."""
    store = open_store(root)
    images = labelled_images(images_dir)
    variants = list(store.manifest.variants)
    answering = None if report is None else stage_progress(report, "answers", len(images) * len(variants))
    results = evaluate_remembered(answers, store, variants, images, answering)
    truth = [image.class_id for image in images]
    return write_answers(
        store,
        {
            r.variant: (r.top_scores, [p == t for p, t in zip(r.predictions, truth, strict=True)])
            for r in results
        },
        images_dir.name,
    )


def write_answers(
    store: Store, answers: Mapping[str, tuple[Sequence[float], Sequence[bool]]], dataset: str
) -> tuple[Store, AnswersFile]:
    """``answers`` (by variant: its top score and whether it was right, image by image, the
    same images in the same order for all) into ``store`` as ``answers.{sha12}.json``, named in
    its manifest in place of any before: the store as it now is, and the file's record."""
    book = {
        name: {
            "sha256": store.manifest.variant(name).sha256,
            "top_scores": [round(s, SCORE_DECIMALS) for s in scores],
            "correct": "".join("1" if c else "0" for c in correct),
        }
        for name, (scores, correct) in answers.items()
    }
    counts = {len(column) for pair in answers.values() for column in pair}
    if len(counts) != 1:
        raise StoreError("answers to record need one answer per image for every variant, and a variant")
    (images,) = counts
    data = json.dumps({"variants": book}, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    name = f"answers.{digest[:12]}.json"
    (store.root / name).write_bytes(data)
    recorded = AnswersFile(file=name, sha256=digest, size_bytes=len(data), dataset=dataset, images=images)
    previous = store.manifest.answers
    written = store.write(
        Manifest(variants=store.manifest.variants, reference=store.manifest.reference, answers=recorded)
    )
    if previous is not None and previous.file != name:
        (store.root / previous.file).unlink(missing_ok=True)
    return written, recorded


def plans(store: Store, costs: Mapping[str, float]) -> list[Plan]:
    """The cascade plans over the variants named in ``costs`` (their inference seconds on this
    device) whose answers the store recorded from the very file it serves now; none when it
    recorded none. Raises ``StoreError`` when the recorded answers cannot be read."""
    recorded = store.manifest.answers
    if recorded is None:
        return []
    data = store.verified("the recorded answers", recorded.file, recorded.sha256)
    try:
        book: dict[str, Any] = json.loads(data)["variants"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{recorded.file} holds no answers: {exc}") from None
    scored = []
    for name, cost in costs.items():
        variant, entry = store.manifest.variant(name), book.get(name)
        if not isinstance(entry, dict) or entry.get("sha256") != variant.sha256:
            continue
        scores, correct = entry.get("top_scores"), entry.get("correct")
        if not (
            isinstance(scores, list)
            and isinstance(correct, str)
            and len(scores) == len(correct) == recorded.images
        ):
            raise StoreError(f"{recorded.file}: the answers of {name} do not cover the sample")
        right = [c == "1" for c in correct]
        scored.append(
            Scored(
                name=name,
                labels=variant.labels,
                cost_seconds=cost,
                top1=variant.top1,
                search=Answers(tuple(search_half(scores)), tuple(search_half(right))),
                held_out=Answers(tuple(held_out_half(scores)), tuple(held_out_half(right))),
            )
        )
    return plan_cascades(scored)
