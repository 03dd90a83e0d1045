"""What ``edgefit store add`` is asked (:class:`AddRequest`), and every check made before
anything is staged: the request itself, its label file, and the source model (readable,
self-contained, an image input of a usable layout and size, one score per label). Each refusal
is a ``StoreError`` that says in one line what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from model_store.labels import IMAGENET, imagenet_classes, label_file_name, parse_label_file
from model_store.manifest import Precision, check_safe_name
from model_store.onnx_facts import OnnxFacts, read_facts
from model_store.presets import PRESETS, PreprocessSpec
from model_store.quantize import DEFAULT_MIN_AGREEMENT
from model_store.runner import session_options
from model_store.store import Store, StoreError

# Ops that only a quantised graph holds: such a source is stored as int8, as it is.
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class AddRequest:
    """What ``store add`` is asked to build. Variant names are ``{prefix}-{resolution}-{precision}``."""

    prefix: str
    family: str
    resolutions: tuple[int, ...]
    precisions: tuple[Precision, ...] = ("fp32",)
    preprocess: PreprocessSpec = PRESETS["torchvision"]
    labels_file: Path | None = None
    calibration_dir: Path | None = None
    evaluate_dir: Path | None = None
    # Name recorded as ``top1_dataset`` (default: the evaluation folder's name).
    dataset: str | None = None
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    # The figure published for this checkpoint: fp32, at the (single) resolution given.
    top1: float | None = None

    def name(self, resolution: int, precision: Precision) -> str:
        return f"{self.prefix}-{resolution}-{precision}"


def refuse(source: Path, why: str) -> StoreError:
    return StoreError(f"{source}: {why}")


def check_request(request: AddRequest, store: Store) -> None:
    try:
        check_safe_name(request.prefix, "name")
        check_safe_name(request.family, "family")
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    if not request.resolutions or any(r <= 0 for r in request.resolutions):
        raise StoreError("resolutions must be positive integers, e.g. --resolutions 160,192,224")
    if len(set(request.resolutions)) != len(request.resolutions):
        raise StoreError("--resolutions repeats a resolution")
    if not request.precisions or len(set(request.precisions)) != len(request.precisions):
        raise StoreError("--precisions takes fp32, int8 or fp32,int8")
    if request.top1 is not None:
        if not 0.0 < request.top1 <= 1.0:
            raise StoreError("--top1 is a fraction in (0, 1], e.g. 0.752")
        if len(request.resolutions) != 1:
            raise StoreError("--top1 is the figure published for one resolution: give only that one")
    if not 0.0 < request.min_agreement <= 1.0:
        raise StoreError("--min-agreement is a fraction in (0, 1], e.g. 0.95")
    existing = {v.name for v in store.manifest.variants}
    for resolution in request.resolutions:
        for precision in request.precisions:
            name = request.name(resolution, precision)
            try:
                check_safe_name(name, "variant name")
            except ValueError as exc:
                raise StoreError(str(exc)) from exc
            if name in existing:
                raise StoreError(f"variant {name} already exists in {store.root}")
        try:
            request.preprocess.at(resolution)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc


def read_labels(request: AddRequest) -> tuple[str, tuple[str, ...], bytes | None]:
    """``(manifest reference, labels, label file bytes)``."""
    if request.labels_file is None:
        return IMAGENET, tuple(label for _, label in imagenet_classes()), None
    try:
        data = request.labels_file.read_bytes()
    except OSError as exc:
        raise StoreError(f"{request.labels_file}: cannot read the label file ({exc.strerror})") from None
    try:
        names = parse_label_file(data)
    except ValueError as exc:
        raise StoreError(f"{request.labels_file} {exc}") from None
    return label_file_name(data), names, data


def takes_float_nchw(facts: OnnxFacts) -> bool:
    shape = facts.input_shape
    return len(shape) == 4 and shape[1] == 3 and facts.input_elem_type == onnx.TensorProto.FLOAT


def takes_uint8_nhwc(facts: OnnxFacts) -> bool:
    shape = facts.input_shape
    return len(shape) == 4 and shape[3] == 3 and facts.input_elem_type == onnx.TensorProto.UINT8


def validate_source(
    source: Path, request: AddRequest, classes: int
) -> tuple[OnnxFacts, onnx.ModelProto, bool]:
    """The source's facts, its graph and whether it is quantised already.

    Raises ``StoreError`` saying in one line what is wrong.
    """
    if not source.is_file():
        raise refuse(source, "no such file")
    try:
        facts = read_facts(source)
    except ValueError as exc:
        raise refuse(source, str(exc)) from exc
    except (onnx.checker.ValidationError, OSError) as exc:
        raise refuse(source, f"not a readable ONNX model ({type(exc).__name__})") from exc
    except Exception as exc:  # protobuf's DecodeError and friends: a corrupt file
        raise refuse(source, "not a readable ONNX model") from exc
    if facts.external_data:
        raise refuse(source, "keeps weights in external data files; export one self-contained file")
    shape = list(facts.input_shape)
    if takes_float_nchw(facts):
        sides = shape[2:]
    elif takes_uint8_nhwc(facts):
        sides = shape[1:3]
    else:
        dtype = onnx.TensorProto.DataType.Name(facts.input_elem_type).lower()
        raise refuse(
            source,
            f"input {facts.input_name} is {dtype} {shape}, not an image: "
            "expected float [N, 3, H, W] or uint8 [N, H, W, 3]",
        )
    for resolution in request.resolutions:
        if any(isinstance(side, int) and side != resolution for side in sides):
            raise refuse(
                source,
                f"input is {shape}, which does not take {resolution}x{resolution}; "
                "export with dynamic height and width for a ladder",
            )
    output = list(facts.output_shape)
    if len(output) != 2:
        raise refuse(source, f"output {facts.output_name} has shape {output}; expected [N, classes]")
    if isinstance(output[1], int) and output[1] != classes:
        raise refuse(source, f"output has {output[1]} classes but the labels name {classes}")
    model = onnx.load(str(source))
    quantised = any(node.op_type in QUANTISED_OPS for node in model.graph.node)
    if quantised and request.precisions != ("int8",):
        raise refuse(source, "is already quantised: add it with --precisions int8 (stored as it is)")
    return facts, model, quantised


def run_once(path: Path, source: Path, input_name: str, resolution: int, classes: int) -> None:
    """Load the variant in onnxruntime and run it once: it must give ``[1, classes]`` scores."""
    try:
        session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        (scores,) = session.run(None, {input_name: np.zeros((1, resolution, resolution, 3), np.uint8)})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise refuse(source, f"onnxruntime cannot run it at {resolution}x{resolution} ({first})") from exc
    if np.asarray(scores).shape != (1, classes):
        raise refuse(
            source,
            f"gives scores of shape {list(np.asarray(scores).shape)} at {resolution}x{resolution}; "
            f"expected [1, {classes}] (one per label)",
        )
