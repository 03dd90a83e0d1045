"""Facts read from an ONNX file: its interface, whether it is self-contained, params and MACs.

Used by the builder and by ``edgefit store add``; needs the ``onnx`` package (the ``store`` extra),
never torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

# Inputs of these ops that hold quantisation parameters, not weights.
_QUANT_PARAM_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2)}


@dataclass(frozen=True)
class OnnxFacts:
    input_name: str
    input_shape: tuple[int | str, ...]
    input_elem_type: int
    output_name: str
    output_shape: tuple[int | str, ...]
    external_data: bool
    params: int
    macs: int


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    )


def _concrete(dims: tuple[int | str, ...]) -> list[int]:
    # A symbolic (batch) dimension counts as one image.
    return [d if isinstance(d, int) and d > 0 else 1 for d in dims]


def read_facts(path: Path) -> OnnxFacts:
    """Raises ``onnx`` / ``OSError`` exceptions on unreadable files, ``ValueError`` on bad graphs."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"expected one image input and one output, found {len(inputs)} inputs and "
            f"{len(graph.output)} outputs"
        )
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer) or any(
        attr.t.data_location == onnx.TensorProto.EXTERNAL
        for node in graph.node
        for attr in node.attribute
        if attr.type == onnx.AttributeProto.TENSOR
    )

    quant_params = {
        node.input[i]
        for node in graph.node
        for i in _QUANT_PARAM_INPUTS.get(node.op_type, ())
        if i < len(node.input)
    }
    params = sum(math.prod(t.dims) for name, t in initializers.items() if name not in quant_params)

    macs = 0
    if not external:
        # onnxruntime's symbolic inference follows the Shape/Gather/Concat chains that exported
        # padding produces; onnx's own inference leaves those spatial sizes unknown.
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        shapes = {v.name: _concrete(_dims(v)) for v in inferred.graph.value_info}
        shapes.update({v.name: _concrete(_dims(v)) for v in inferred.graph.input})
        shapes.update({v.name: _concrete(_dims(v)) for v in inferred.graph.output})
        shapes.update({name: list(t.dims) for name, t in initializers.items()})
        for node in inferred.graph.node:
            macs += _node_macs(node, shapes)
    return OnnxFacts(
        input_name=inputs[0].name,
        input_shape=_dims(inputs[0]),
        input_elem_type=inputs[0].type.tensor_type.elem_type,
        output_name=graph.output[0].name,
        output_shape=_dims(graph.output[0]),
        external_data=external,
        params=params,
        macs=macs,
    )


def _weight_shape(node: onnx.NodeProto, index: int, shapes: dict[str, list[int]]) -> list[int]:
    return shapes.get(node.input[index], []) if index < len(node.input) else []


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one Conv / Gemm / MatMul node (others count as zero)."""
    out = shapes.get(node.output[0], [])
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        weight = _weight_shape(node, 3 if node.op_type == "QLinearConv" else 1, shapes)
        if len(weight) < 3 or not out:
            return 0
        # out elements x (input channels per group x kernel area)
        return math.prod(out) * math.prod(weight[1:])
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
        a = _weight_shape(node, 0, shapes)
        if not a or not out:
            return 0
        return math.prod(out) * a[-1]
    return 0
