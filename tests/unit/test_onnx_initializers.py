"""The server's own reader of an ONNX model's tensors agrees with onnx's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper, numpy_helper

from model_store.onnx_initializers import initializers

DTYPES = [np.float32, np.uint8, np.int8, np.int32, np.int64, np.float16]


def model_with(tensors: dict[str, np.ndarray], *, raw: bool = True) -> bytes:
    protos = []
    for name, array in tensors.items():
        proto = numpy_helper.from_array(array, name)
        if not raw and array.dtype == np.float32:  # the typed field instead of raw bytes
            proto = helper.make_tensor(name, onnx.TensorProto.FLOAT, array.shape, array.ravel().tolist())
        protos.append(proto)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        protos,
    )
    return helper.make_model(graph).SerializeToString()


@given(
    st.lists(
        st.sampled_from(DTYPES).flatmap(
            lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
        ),
        max_size=5,
    )
)
@settings(max_examples=60, deadline=None)
def test_every_raw_initializer_is_read_as_onnx_reads_it(arrays: list[np.ndarray]) -> None:
    tensors = {f"t{i}": a for i, a in enumerate(arrays)}
    read = {t.name: t.array for t in initializers(model_with(tensors))}
    assert read.keys() == tensors.keys()
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        assert np.array_equal(read[name], array, equal_nan=True)


def test_tensors_not_held_as_raw_bytes_are_left_out() -> None:
    model = model_with({"typed": np.ones((2, 3), np.float32)}, raw=False)
    assert list(initializers(model)) == []


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_truncated_bytes_are_not_a_model(cut: int) -> None:
    model = model_with({"w": np.arange(64, dtype=np.float32)})
    with pytest.raises(ValueError, match="not an ONNX model"):
        list(initializers(model[:-cut]))
