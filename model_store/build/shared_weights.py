"""Variants cut from one network keep one copy of its weights on disk.

A family's resolutions hold the same tensors, and its subnets those minus the blocks they skip;
int8 variants quantise each weight tensor from the weights alone (per channel), so theirs are
the same at every resolution and depth too. Written whole, each file repeated them. Here the
variants of one family and precision are rewritten as graphs whose tensors (from
``MIN_SHARED_BYTES`` up) live in one weights file, each distinct tensor once, located by that
file's name alone (ONNX external data: name, offset, length). The server hands onnxruntime the
verified file from memory (``model_store.runner.open_session``), which in memory holds each
tensor once again for every fp32 session (``model_store.runner.SharedTensors``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from model_store.manifest import Variant, Weights
from model_store.store import sha256_file

# Smaller tensors (shapes, scales, biases of a few channels) stay in the graph.
MIN_SHARED_BYTES = 1024
# Each tensor starts on a multiple of this in the weights file.
ALIGNMENT = 64


def share_weights(staging: Path, variants: Sequence[Variant], kind: str) -> list[Variant]:
    """``variants`` (files in ``staging``, each holding its own tensors) with those of each
    family and precision rewritten onto one weights file written beside them,
    ``{family}-{precision}-{kind}.{sha256[:12]}.weights``."""
    groups: dict[tuple[str, str], list[Variant]] = {}
    for v in variants:
        groups.setdefault((v.family, v.precision), []).append(v)
    shared = {}
    for (family, precision), members in groups.items():
        shared.update(_share(staging, f"{family}-{precision}-{kind}", members))
    return [shared[v.name] for v in variants]


def _share(staging: Path, stem: str, members: Sequence[Variant]) -> dict[str, Variant]:
    models = {v.file: onnx.load(str(staging / v.file)) for v in members}
    blob = bytearray()
    offsets: dict[str, tuple[int, int]] = {}  # by content
    placed: dict[str, list[tuple[onnx.TensorProto, int, int]]] = {}
    for file, model in models.items():
        placed[file] = []
        for tensor in model.graph.initializer:
            raw = np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes()
            if len(raw) < MIN_SHARED_BYTES:
                continue
            key = hashlib.sha256(f"{tensor.data_type}{list(tensor.dims)}".encode() + raw).hexdigest()
            if key not in offsets:
                blob += bytes(-len(blob) % ALIGNMENT)
                offsets[key] = (len(blob), len(raw))
                blob += raw
            placed[file].append((tensor, *offsets[key]))
    digest = hashlib.sha256(blob).hexdigest()
    weights = Weights(file=f"{stem}.{digest[:12]}.weights", sha256=digest, size_bytes=len(blob))
    (staging / weights.file).write_bytes(blob)
    files = {}  # the rewritten graph of each file: (name, sha256, bytes in the graph and used)
    for file, model in models.items():
        for tensor, offset, length in placed[file]:
            _externalise(tensor, weights.file, offset, length)
        graph = staging / f".{file}.graph"
        onnx.save(model, str(graph))
        (staging / file).unlink()
        graph_digest = sha256_file(graph)
        name = f"{file.rsplit('.', 2)[0]}.{graph_digest[:12]}.onnx"
        graph.rename(staging / name)
        used = sum(length for _, _, length in placed[file])
        files[file] = (name, graph_digest, (staging / name).stat().st_size + used)
    return {
        v.name: v.model_copy(
            update={
                "file": files[v.file][0],
                "sha256": files[v.file][1],
                "size_bytes": files[v.file][2],
                "weights": weights,
            }
        )
        for v in members
    }


def _externalise(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """``tensor``'s data moved to ``location`` at ``offset`` (the graph keeps its type and shape)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
