"""``edgefit store cascades``: the store's confidence cascade plans, measured and written.

Every variant classifies the labelled sample once (``model_store.evaluate``, the serving path;
answers that ``store build`` and ``store specialize`` kept are taken as they are,
``model_store.answers``) and its inference is timed on this machine as the server profiles it;
``model_store.cascades`` chooses the plans from those answers (thresholds from the search half,
figures from the held-out half), and they replace the manifest's plans. Plans are measured here,
not assumed: a badly chosen pair is worse than a single variant.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from model_store.answers import AnswerCache, evaluate_remembered
from model_store.cascades import Answers, Plan, Scored, plan_cascades
from model_store.evaluate import (
    Evaluation,
    LabelledImage,
    Progress,
    evaluate,
    held_out_dataset,
    held_out_half,
    labelled_images,
    search_half,
    stage_progress,
)
from model_store.manifest import Cascade, Manifest, Variant
from model_store.runner import VariantRunner, time_inference
from model_store.store import Store, open_store

# Timed runs per variant: its cost is a median, as the server's profile is.
COST_RUNS = 20
COST_WARMUP = 3


def _answers(result: Evaluation, images: Sequence[LabelledImage]) -> Answers:
    correct = tuple(p == image.class_id for p, image in zip(result.predictions, images, strict=True))
    return Answers(result.top_scores, correct)


def inference_cost(store: Store, variant: Variant) -> float:
    """The variant's median inference seconds on this machine, one thread, as served."""
    runner = VariantRunner.from_store(store, variant)
    return statistics.median(time_inference(runner, COST_RUNS, COST_WARMUP))


def score(
    store: Store,
    images: Sequence[LabelledImage],
    report: Progress | None = None,
    answers: AnswerCache | None = None,
) -> list[Scored]:
    """Every variant's answers on both halves of ``images`` (those ``answers`` keeps taken from
    it) and its cost on this machine; ``report`` follows both."""
    variants = list(store.manifest.variants)
    answering = None if report is None else stage_progress(report, "answers", len(images) * len(variants))
    if answers is None:
        results = evaluate(store, variants, images, progress=answering)
    else:
        results = evaluate_remembered(answers, store, variants, images, answering)
    timing = None if report is None else stage_progress(report, "latency", len(variants))
    scored = []
    for variant, result in zip(variants, results, strict=True):
        both = _answers(result, images)
        cost = inference_cost(store, variant)
        if timing is not None:
            timing(1)
        scored.append(
            Scored(
                name=variant.name,
                labels=variant.labels,
                cost_seconds=cost,
                top1=variant.top1,
                search=Answers(tuple(search_half(both.top_scores)), tuple(search_half(both.correct))),
                held_out=Answers(tuple(held_out_half(both.top_scores)), tuple(held_out_half(both.correct))),
            )
        )
    return scored


def as_cascade(plan: Plan, dataset: str) -> Cascade:
    return Cascade(
        small=plan.small,
        big=plan.big,
        threshold=plan.threshold,
        top1=plan.top1,
        top1_dataset=held_out_dataset(dataset),
        held_out_accuracy=round(plan.held_out_accuracy, 4),
        escalation_rate=round(plan.escalation_rate, 4),
        planned_cost_ms=round(1000 * plan.cost_seconds, 3),
    )


def plan_store(
    root: Path, images_dir: Path, report: Progress | None = None, answers: AnswerCache | None = None
) -> tuple[Store, list[Plan]]:
    """Plan the store at ``root`` on the labelled images in ``images_dir`` and write the plans
    (none, when no pair beats the single variants); ``report`` follows the variants' answers,
    ``answers`` holds those already known. Raises ``StoreError``."""
    store = open_store(root)
    images = labelled_images(images_dir)
    plans = plan_cascades(score(store, images, report, answers))
    cascades = tuple(as_cascade(p, images_dir.name) for p in plans)
    written = Manifest(
        variants=store.manifest.variants, cascades=cascades, reference=store.manifest.reference
    )
    return store.write(written), plans
