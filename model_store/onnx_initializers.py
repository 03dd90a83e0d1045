"""The tensors a serialised ONNX model holds, read from its protobuf wire format.

The server does not import ``onnx`` (nor its size in the image): sharing tensors across
sessions (``model_store.runner.SharedTensors``) needs only each top-level initializer's name,
element type, dimensions and raw bytes, which take a few fields of three messages
(onnx.proto: ``ModelProto.graph`` = 7, ``GraphProto.initializer`` = 5, ``TensorProto`` dims = 1,
data_type = 2, name = 8, raw_data = 9, data_location = 14).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _DATA_LOCATION = 1, 2, 8, 9, 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_EXTERNAL = 1
# onnx.TensorProto.DataType: the element types a CNN's initializers use.
_DTYPES: dict[int, type[np.generic]] = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    10: np.float16,
    11: np.float64,
}


@dataclass(frozen=True)
class Initializer:
    name: str
    array: np.ndarray  # a read-only view of the model's bytes


def initializers(model: bytes) -> Iterator[Initializer]:
    """The top-level initializers whose data is in the model as raw bytes of a known element
    type (others, and those in external files, are left out). Raises ``ValueError`` on bytes
    that are not a protobuf message."""
    for field, graph in _fields(memoryview(model)):
        if field != _MODEL_GRAPH or not isinstance(graph, memoryview):
            continue
        for field, tensor in _fields(graph):
            if field == _GRAPH_INITIALIZER and isinstance(tensor, memoryview):
                found = _initializer(tensor)
                if found is not None:
                    yield found


def _initializer(message: memoryview) -> Initializer | None:
    dims: list[int] = []
    name, dtype, raw, external = "", None, None, False
    for field, value in _fields(message):
        if field == _DIMS:
            dims += _varints(value) if isinstance(value, memoryview) else [value]  # packed or not
        elif field == _DATA_TYPE and isinstance(value, int):
            dtype = _DTYPES.get(value)
        elif field == _NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif field == _RAW_DATA and isinstance(value, memoryview):
            raw = value
        elif field == _DATA_LOCATION:
            external = value == _EXTERNAL
    if external or dtype is None or raw is None or not name:
        return None
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"initializer {name}: {array.size} elements for dims {dims}")
    return Initializer(name, array.reshape(dims))


def _fields(message: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field of a message, in order: an int for a varint, the
    bytes of anything else."""
    i, end = 0, len(message)
    while i < end:
        key, i = _varint(message, i)
        field, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, i = _varint(message, i)
        elif wire == _LENGTH:
            length, i = _varint(message, i)
            value, i = message[i : i + length], i + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, i = message[i : i + size], i + size
        else:
            raise ValueError(f"not an ONNX model: protobuf wire type {wire} at byte {i}")
        if i > end:
            raise ValueError("not an ONNX model: a field runs past the end of its message")
        yield field, value


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("not an ONNX model: a truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _varints(data: memoryview) -> list[int]:
    values, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        values.append(value)
    return values
