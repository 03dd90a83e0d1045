"""One onnxruntime session per variant, and the post-processing of its logits.

The server and the store's evaluation both run images through :class:`VariantRunner`, so a
recorded accuracy and a served answer come from the same code.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import onnxruntime as ort

from model_store.manifest import Variant

# A file in memory that no external data location names (see ``open_session``).
NO_EXTERNAL_DATA = ("", b"\0")


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the cores that other requests' workers need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A gateway serves a dozen sessions in 1-4 GB: each session's own CPU arena and the buffers
    # planned per input shape are kept per session for ever, and a reload builds a second set.
    # Without them, intermediate tensors come from malloc per run (bench/memory.py: RSS and
    # latency of each choice).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options


def open_session(
    model: bytes, options: ort.SessionOptions, weights: tuple[str, bytes] | None = None
) -> ort.InferenceSession:
    """A CPU session made from the model's bytes, holding no copy of them; ``weights``: the shared
    weights file its tensors are in, ``(file name, contents)``, given from memory (onnxruntime
    copies what the model uses). onnxruntime opens no path for a model's external data: given
    files in memory, it refuses a location it does not hold; given none, it would open one
    relative to the working directory, so a model without shared weights gets a table that no
    location names.

    onnxruntime's Python wrapper keeps the bytes it was given (``_model_bytes``, only to rebuild
    the session after a GPU provider fails): for the whole life of the session, as much memory
    again as the file, for nothing on a CPU-only server (``bench/memory.py`` measures it).
    """
    name, data = NO_EXTERNAL_DATA if weights is None else weights
    options.add_external_initializers_from_files_in_memory([name], [data], [len(data)])
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session._model_bytes = None
    return session


class VariantRunner:
    """A loaded variant. ``infer`` is thread-safe (onnxruntime sessions are)."""

    def __init__(
        self, model: bytes, variant: Variant, threads: int = 1, weights: bytes | None = None
    ) -> None:
        """``model``: the ONNX file's bytes, as ``Store.verify`` checked them; ``weights``: its
        shared weights file's, as ``Store.verify_weights`` checked them (a variant with
        ``weights`` cannot load without)."""
        if (weights is None) != (variant.weights is None):
            raise ValueError(f"{variant.name}: its shared weights file must be given, and only then")
        self.variant = variant
        shared = None if variant.weights is None or weights is None else (variant.weights.file, weights)
        self.session = open_session(model, session_options(threads), shared)

    def sharing_session(self, variant: Variant) -> VariantRunner:
        """A runner for ``variant`` on this runner's session: ``variant``'s file must be this
        one's (same sha256), as when a store's resolutions of one network share a graph whose
        height and width are free (``model_store.build.builder``)."""
        if variant.sha256 != self.variant.sha256:
            raise ValueError(f"{variant.name} is not in the file of {self.variant.name}")
        runner = copy.copy(self)
        runner.variant = variant
        return runner

    def infer(self, tensor: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """Logits for one image (``uint8 [1, H, W, 3]``, see ``model_store.imaging``), shape ``[classes]``."""
        outputs = self.session.run([self.variant.output_name], {self.variant.input.name: tensor}, run_options)
        logits: np.ndarray = np.asarray(outputs[0])[0]
        return logits


def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable classes as ``(class_id, softmax probability)``, best first."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum()
    k = min(k, probabilities.size)
    best = np.argpartition(-probabilities, k - 1)[:k]
    # Stable on ties: the lower class id first, as argmax would choose.
    best = best[np.lexsort((best, -probabilities[best]))]
    return [(int(i), float(probabilities[i])) for i in best]


def timing_input(runner: VariantRunner) -> np.ndarray:
    """Fixed noise of the variant's input shape: a CNN's latency does not depend on pixels."""
    size = runner.variant.resolution
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def timed(runner: VariantRunner, tensor: np.ndarray) -> float:
    """Seconds of one inference."""
    start = time.perf_counter()
    runner.infer(tensor)
    return time.perf_counter() - start


def time_inference(runner: VariantRunner, runs: int, warmup: int) -> list[float]:
    """Seconds per inference over ``runs`` timed runs, after ``warmup`` untimed ones."""
    tensor = timing_input(runner)
    for _ in range(warmup):
        runner.infer(tensor)
    return [timed(runner, tensor) for _ in range(runs)]
