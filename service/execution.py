"""Running a chosen job on an inference worker, within the hard inference timeout.

The jobs themselves (decode and classify one image; classify an image a cascade's first stage
decoded; run a batch of cropped images) are built here too, so that what runs on a worker is in
one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import onnxruntime as ort
from PIL import Image

from model_store.manifest import Preprocessing
from model_store.runner import VariantRunner, top_k
from service import errors, imaging
from service.core import schedule
from service.core.admission import retry_after
from service.observability import Metrics
from service.runtime.executor import Finished, InferenceExecutor, Shed
from service.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Classified:
    decode_seconds: float  # decoding (if this job did) and resizing to the variant's input
    inference_seconds: float
    best: list[tuple[int, float]]  # (class id, softmax score), best first
    picture: Image.Image  # the decoded image, for a cascade's next stage


def _classify(
    picture: Image.Image, runner: VariantRunner, top: int, run_options: ort.RunOptions, started: float
) -> Classified:
    tensor = imaging.to_tensor(picture, runner.variant.preprocessing)
    t1 = time.perf_counter()
    logits = runner.infer(tensor, run_options)
    t2 = time.perf_counter()
    return Classified(t1 - started, t2 - t1, top_k(logits, top), picture)


def classify_job(
    image: bytes,
    runner: VariantRunner,
    top: int,
    max_pixels: int,
    run_options: ort.RunOptions,
    decode_for: Preprocessing | None = None,
) -> Callable[[], Classified]:
    """Decode ``image`` (at the size ``decode_for`` needs; by default ``runner``'s variant) and
    classify it; image errors are the client's."""
    preprocessing = decode_for or runner.variant.preprocessing

    def job() -> Classified:
        started = time.perf_counter()
        return _classify(imaging.decode(image, preprocessing, max_pixels), runner, top, run_options, started)

    return job


def next_stage_job(
    picture: Image.Image, runner: VariantRunner, top: int, run_options: ort.RunOptions
) -> Callable[[], Classified]:
    """Classify an image a cascade's first stage decoded, resized to ``runner``'s input."""

    def job() -> Classified:
        return _classify(picture, runner, top, run_options, time.perf_counter())

    return job


def tensor_job(
    runner: VariantRunner, tensor: np.ndarray, run_options: ort.RunOptions
) -> Callable[[], np.ndarray]:
    """The raw output for a batch of cropped images."""
    variant = runner.variant

    def job() -> np.ndarray:
        outputs = runner.session.run([variant.output_name], {variant.input.name: tensor}, run_options)
        return np.asarray(outputs[0])

    return job


class Execution:
    def __init__(self, settings: Settings, metrics: Metrics, executor: InferenceExecutor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor

    async def run(
        self,
        work: Callable[[], T],
        scheduled: schedule.Job,
        run_options: ort.RunOptions,
        name: str,
        budget: float | None,
        *,
        shed_when_missed: bool = False,
    ) -> Finished[T]:
        """``work`` on a worker, within the hard inference timeout; counts its queue wait.

        A job past hope (``schedule.missed``: it can no longer end within its budget) still runs,
        after everything that can be on time, unless it waited past the admission bound, or is
        ``shed_when_missed`` (``Choice.shed_when_missed``; a cascade's second stage, whose first
        answer stands): then it raises ``errors.Overloaded``. Also raises
        ``errors.InferenceTimeout``, or what ``work`` raised."""
        patience = 0.0 if shed_when_missed else self.settings.max_queue_wait_seconds
        future = self.executor.submit(work, scheduled, patience)
        self.metrics.queue_depth.set(self.executor.queued)
        timeout = self.settings.inference_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                # Shielded: a timed-out job still runs to its (terminated) end on its worker.
                finished = await asyncio.shield(future)
        except Shed as exc:
            raise errors.Overloaded(
                f"the server is past capacity: this request could no longer meet its budget ({exc} "
                "in the queue); retry later",
                retry_after_seconds=retry_after(self.settings.max_queue_wait_seconds),
            ) from None
        except TimeoutError:
            # onnxruntime checks this flag between kernels: the worker is freed, not leaked.
            run_options.terminate = True
            raise errors.InferenceTimeout(
                f"inference on {name} ran past {timeout:g} s and was aborted"
            ) from None
        finally:
            self.metrics.queue_depth.set(self.executor.queued)
        self.metrics.queue_wait.observe(finished.queue_seconds)
        self.metrics.queue_wait_in_tier[schedule.tier_name(budget)].observe(finished.queue_seconds)
        return finished
