"""The served input format: every model takes the cropped image as ``uint8`` ``[N, H, W, 3]``, RGB.

:func:`with_image_input` puts what used to run on the host in front of a float NCHW model, inside
the graph: cast to float, channel order, ``(x - mean) / std`` and the transpose to NCHW. The host
then only decodes, resizes and crops (``model_store.imaging``), hands over the pixels as Pillow
gives them, and onnxruntime does the arithmetic in its own kernels. The builder applies it to
every exported model and ``edgefit store add`` to users' float models, so there is one serving
path. Pure ``onnx``: no torch, no onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_store.manifest import ModelInput, Preprocessing

# Prefix for everything this module adds to a graph, so its nodes can be told apart (the int8
# quantiser leaves them in float) and never clash with the model's own names.
PREFIX = "edgefit_input/"


def image_input(name: str, resolution: int) -> ModelInput:
    """The manifest's description of a served model's input."""
    return ModelInput(name=name, shape=(-1, resolution, resolution, 3))


def prefix_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes :func:`with_image_input` added to ``model``."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX)]


def _preprocessing_nodes(
    graph: onnx.GraphProto, name: str, nchw: str, preprocessing: Preprocessing
) -> list[onnx.NodeProto]:
    """``uint8 NHWC`` input ``name`` -> normalised float ``nchw``: cast, channel order, mean and
    std, transpose. Adds the constants they need to ``graph``'s initializers."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    # Multiplying by the reciprocal is what the host did before: same float arithmetic.
    scale = (1.0 / np.asarray(preprocessing.std, dtype=np.float32)).astype(np.float32)
    graph.initializer.extend(
        [numpy_helper.from_array(mean, PREFIX + "mean"), numpy_helper.from_array(scale, PREFIX + "scale")]
    )
    nodes = [helper.make_node("Cast", [name], [PREFIX + "float"], name=PREFIX + "cast", to=TensorProto.FLOAT)]
    pixels = PREFIX + "float"
    if preprocessing.channel_order == "BGR":
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), PREFIX + "bgr"))
        nodes.append(
            helper.make_node(
                "Gather", [pixels, PREFIX + "bgr"], [PREFIX + "bgr_pixels"], name=PREFIX + "to_bgr", axis=3
            )
        )
        pixels = PREFIX + "bgr_pixels"
    nodes += [
        helper.make_node("Sub", [pixels, PREFIX + "mean"], [PREFIX + "centred"], name=PREFIX + "sub_mean"),
        helper.make_node(
            "Mul", [PREFIX + "centred", PREFIX + "scale"], [PREFIX + "normalised"], name=PREFIX + "div_std"
        ),
        helper.make_node(
            "Transpose", [PREFIX + "normalised"], [nchw], name=PREFIX + "to_nchw", perm=[0, 3, 1, 2]
        ),
    ]
    return nodes


def with_image_input(
    model: onnx.ModelProto, preprocessing: Preprocessing, resolution: int
) -> onnx.ModelProto:
    """A copy of ``model`` (one float ``[N, 3, H, W]`` input) that takes ``uint8 [N, H, W, 3]`` RGB.

    The new input keeps the old input's name and its batch dimension; height and width become
    ``resolution``. Raises ``ValueError`` if the model's input is not float NCHW with 3 channels.
    """
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input, found {len(inputs)}")
    original = inputs[0]
    tensor_type = original.type.tensor_type
    dims = tensor_type.shape.dim
    if tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1].dim_value != 3:
        raise ValueError(f"input {original.name} is not float32 [N, 3, H, W]")

    name = original.name
    nchw = PREFIX + "nchw"
    for node in graph.node:
        node.input[:] = [nchw if i == name else i for i in node.input]
    for output in graph.output:
        if output.name == name:
            raise ValueError(f"input {name} is also an output")

    nodes = _preprocessing_nodes(graph, name, nchw, preprocessing)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old_nodes])

    batch = dims[0].dim_param or (dims[0].dim_value if dims[0].dim_value > 0 else "batch")
    inner = onnx.ValueInfoProto()
    inner.CopyFrom(original)
    inner.name = nchw
    graph.value_info.append(inner)
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, resolution, resolution, 3])
    position = list(graph.input).index(original)
    graph.input.remove(original)
    graph.input.insert(position, new_input)
    onnx.checker.check_model(wrapped)
    return wrapped


def wrap_file(source: Path, target: Path, preprocessing: Preprocessing, resolution: int) -> None:
    """Write ``source`` (a float NCHW model file) to ``target`` with the ``uint8`` NHWC input.

    ``target`` may be ``source``. Raises ``ValueError`` as :func:`with_image_input` does.
    """
    wrapped = with_image_input(onnx.load(str(source)), preprocessing, resolution)
    onnx.save(wrapped, str(target))
