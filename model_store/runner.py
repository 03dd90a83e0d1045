"""One onnxruntime session per variant, and the post-processing of its logits.

The server and the store's evaluation both run images through :class:`VariantRunner`, so a
recorded accuracy and a served answer come from the same code.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_store.manifest import Variant
from model_store.onnx_initializers import initializers
from model_store.store import Store

log = logging.getLogger(__name__)

# A file in memory that no external data location names (see ``open_session``).
NO_EXTERNAL_DATA = ("", b"\0")
# Smaller tensors (shapes, biases of a few channels) are not worth a shared copy.
MIN_SHARED_BYTES = 1024


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


class SharedTensors:
    """Tensors held once for every fp32 session that uses them (onnxruntime's
    ``add_initializer``), by content: a family's subnets and its full network hold the same
    weights, which each session would otherwise copy. Keep it as long as any of those sessions."""

    def __init__(self) -> None:
        self._values: dict[bytes, tuple[np.ndarray, ort.OrtValue]] = {}

    def value(self, array: np.ndarray) -> ort.OrtValue:
        """The one held copy of ``array``'s content."""
        key = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).digest()
        held = self._values.get(key)
        if held is None:
            copy_ = np.ascontiguousarray(array).copy()
            held = self._values[key] = (copy_, ort.OrtValue.ortvalue_from_numpy(copy_))
        return held[1]

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array, _ in self._values.values())


def open_session(
    model: bytes,
    options: ort.SessionOptions,
    weights: tuple[str, bytes] | None = None,
    shared: SharedTensors | None = None,
) -> ort.InferenceSession:
    """A CPU session made from the model's bytes with ``options`` (``session_options``; each
    session its own), holding no copy of the bytes; ``weights``: the shared
    weights file its tensors are in, ``(file name, contents)``, given from memory (onnxruntime
    copies what the model uses). onnxruntime opens no path for a model's external data: given
    files in memory, it refuses a location it does not hold; given none, it would open one
    relative to the working directory, so a model without shared weights gets a table that no
    location names.

    ``shared``: the model is optimised for this machine first (onnxruntime's full graph
    optimisation, saved: it lays convolution weights out for this CPU's kernels), then opened
    as it is with its tensors taken from ``shared``, so that sessions holding the same weights
    hold them once. Only without pre-packing: a kernel's packed copy is per session (int8
    kernels need theirs to run at speed: leave int8 models unshared).

    onnxruntime's Python wrapper keeps the bytes it was given (``_model_bytes``, only to rebuild
    the session after a GPU provider fails): for the whole life of the session, as much memory
    again as the file, for nothing on a CPU-only server (``bench/memory.py`` measures it).
    """
    _only_in_memory(options, NO_EXTERNAL_DATA if weights is None else weights)
    if shared is not None:
        try:
            model = _optimised_here(model, options)
        except OSError as exc:
            log.warning("no writable temporary directory (%s): this session holds its own tensors", exc)
            return _opened(model, options)
        optimised = session_options(options.intra_op_num_threads)
        optimised.enable_cpu_mem_arena = options.enable_cpu_mem_arena
        optimised.enable_mem_pattern = options.enable_mem_pattern
        options = optimised
        _only_in_memory(options, NO_EXTERNAL_DATA)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
        for tensor in initializers(model):
            if tensor.array.nbytes >= MIN_SHARED_BYTES:
                options.add_initializer(tensor.name, shared.value(tensor.array))
    return _opened(model, options)


def _opened(model: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session._model_bytes = None
    return session


def _only_in_memory(options: ort.SessionOptions, file: tuple[str, bytes]) -> None:
    """``file``, ``(name, contents)``, is the one external data file the model may use."""
    name, data = file
    options.add_external_initializers_from_files_in_memory([name], [data], [len(data)])


def _optimised_here(model: bytes, options: ort.SessionOptions) -> bytes:
    """``model`` as onnxruntime optimises it with ``options`` on this machine (valid here only)."""
    with tempfile.TemporaryDirectory(prefix="edgefit-optimised-") as tmp:
        path = Path(tmp) / "model.onnx"
        options.optimized_model_filepath = str(path)
        # The warning that the file suits this machine only is what is wanted here.
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return path.read_bytes()


class VariantRunner:
    """A loaded variant. ``infer`` is thread-safe (onnxruntime sessions are)."""

    def __init__(
        self,
        model: bytes,
        variant: Variant,
        threads: int = 1,
        weights: tuple[str, bytes] | None = None,
        shared: SharedTensors | None = None,
    ) -> None:
        """``model``: the ONNX file's bytes, as ``Store.verify`` checked them; ``weights``: its
        shared weights file, as ``Store.verify_weights`` checked it (a variant with ``weights``
        cannot load without); ``shared``: where an fp32 variant's tensors are held once for
        every session that has them (see ``open_session``)."""
        if (weights is None) != (variant.weights is None):
            raise ValueError(f"{variant.name}: its shared weights file must be given, and only then")
        self.variant = variant
        # Held as long as the session: its tensors are in it.
        self.shared = shared if variant.precision == "fp32" else None
        self.session = open_session(model, session_options(threads), weights, self.shared)

    @classmethod
    def from_store(cls, store: Store, variant: Variant, threads: int = 1) -> VariantRunner:
        """``variant`` loaded from ``store``, every file it uses verified first."""
        return cls(store.verify(variant), variant, threads, store.verify_weights(variant))

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
