"""The served input format put in front of a float NCHW model, checked against numpy."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from model_store.image_input import prefix_node_names, with_image_input
from model_store.manifest import Preprocessing

PRE = Preprocessing(resize_shorter=9, crop=8, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def passthrough(
    batch: str | int = "n", elem_type: int = TensorProto.FLOAT, channels: int = 3
) -> onnx.ModelProto:
    """A float NCHW model whose output is its input: shows exactly what reaches the network."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="net")],
        "passthrough",
        [helper.make_tensor_value_info("x", elem_type, [batch, channels, "h", "w"])],
        [helper.make_tensor_value_info("y", elem_type, [batch, channels, "h", "w"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": image})
    return np.asarray(out)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_the_network_sees_the_normalised_nchw_tensor(order: str) -> None:
    pre = PRE.model_copy(update={"channel_order": order})
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    pixels = images.astype(np.float32)[..., ::-1] if order == "BGR" else images.astype(np.float32)
    expected = ((pixels - np.float32(pre.mean)) / np.float32(pre.std)).transpose(0, 3, 1, 2)
    assert np.allclose(run(with_image_input(passthrough(), pre, 8), images), expected, atol=1e-5)


def test_the_input_keeps_its_name_and_batch_and_takes_the_resolution() -> None:
    wrapped = with_image_input(passthrough(batch="batch"), PRE, 8)
    (graph_input,) = wrapped.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "x" and graph_input.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 8, 8, 3]
    assert prefix_node_names(wrapped) and "net" not in prefix_node_names(wrapped)


@pytest.mark.parametrize(
    "model",
    [passthrough(elem_type=TensorProto.UINT8), passthrough(channels=1)],
    ids=["not-float", "one-channel"],
)
def test_only_float_three_channel_nchw_models_are_wrapped(model: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match=r"not float32 \[N, 3, H, W\]"):
        with_image_input(model, PRE, 8)
