"""``edgefit store add``: bring in a model exported elsewhere (MobileNetV3, GhostNet, ...).

The file is validated (one self-contained ONNX file, one image input, a ``[N, 1000]`` output,
loads in onnxruntime) and stored under a content-addressed name, then added to the manifest
atomically; nothing is changed if any step fails. A model that takes float ``[N, 3, H, W]`` (the
usual export) gets the served input format put in front of it (``model_store.image_input``) with
the given normalisation; one that already takes ``uint8 [N, H, W, 3]`` RGB is stored as it is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from pydantic import ValidationError

from model_store.image_input import image_input, wrap_file
from model_store.manifest import Manifest, Precision, Preprocessing, Variant, check_safe_name
from model_store.onnx_facts import OnnxFacts, read_facts
from model_store.runner import session_options
from model_store.store import Store, StoreError, open_store, sha256_file

# torchvision's ImageNet normalisation, in 0..255 pixel units: what most exported models expect.
TORCHVISION_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_STD = (58.395, 57.12, 57.375)
CLASSES = 1000


def _validate(path: Path, resolution: int) -> OnnxFacts:
    """The file's facts; raise ``StoreError`` saying what is wrong with it."""
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        facts = read_facts(path)
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    except Exception as exc:  # protobuf's DecodeError and friends: a corrupt file
        raise StoreError(f"{path}: not a readable ONNX model") from exc
    if facts.external_data:
        raise StoreError(f"{path}: keeps weights in external data files; export one self-contained file")
    shape = facts.input_shape
    if _takes_float_nchw(facts):
        sides = shape[2:]
    elif len(shape) == 4 and shape[3] == 3 and facts.input_elem_type == onnx.TensorProto.UINT8:
        sides = shape[1:3]
    else:
        dtype = onnx.TensorProto.DataType.Name(facts.input_elem_type).lower()
        raise StoreError(
            f"{path}: input {facts.input_name} is {dtype} {list(shape)}; "
            "expected float [N, 3, H, W] or uint8 [N, H, W, 3]"
        )
    for dim in sides:
        if isinstance(dim, int) and dim != resolution:
            raise StoreError(f"{path}: input is {list(shape)}, which does not take {resolution}x{resolution}")
    if len(facts.output_shape) != 2 or facts.output_shape[1] != CLASSES:
        raise StoreError(f"{path}: output has shape {list(facts.output_shape)}; expected [N, {CLASSES}]")
    return facts


def _takes_float_nchw(facts: OnnxFacts) -> bool:
    shape = facts.input_shape
    return len(shape) == 4 and shape[1] == 3 and facts.input_elem_type == onnx.TensorProto.FLOAT


def add(
    store_root: Path,
    source: Path,
    *,
    name: str,
    family: str,
    resolution: int,
    precision: Precision = "fp32",
    top1: float | None = None,
    mean: tuple[float, float, float] = TORCHVISION_MEAN,
    std: tuple[float, float, float] = TORCHVISION_STD,
    resize_shorter: int | None = None,
) -> Store:
    """Add ``source`` to the store as variant ``name``. Raises ``StoreError``.

    ``mean``/``std`` are in 0..255 pixel units; ``resize_shorter`` defaults to the usual
    0.875 centre-crop ratio.
    """
    try:
        check_safe_name(name, "variant name")
        check_safe_name(family, "family")
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    store = open_store(store_root, missing_ok=True)
    if name in {v.name for v in store.manifest.variants}:
        raise StoreError(f"variant {name} already exists in {store_root}")
    if resolution <= 0:
        raise StoreError("resolution must be positive")
    if top1 is not None and not 0.0 < top1 <= 1.0:
        raise StoreError("--top1 is a fraction in (0, 1], e.g. 0.752")
    try:
        preprocessing = Preprocessing(
            resize_shorter=resize_shorter or round(resolution / 0.875),
            crop=resolution,
            mean=mean,
            std=std,
        )
    except ValidationError as exc:
        raise StoreError(f"invalid preprocessing: {exc.errors()[0]['msg']}") from None
    facts = _validate(source, resolution)

    store_root.mkdir(parents=True, exist_ok=True)
    # Write under a temporary name first: a half-written file is never named by anything.
    with tempfile.NamedTemporaryFile(dir=store_root, prefix=".add-", suffix=".tmp", delete=False) as tmp:
        staged = Path(tmp.name)
    try:
        if _takes_float_nchw(facts):
            try:
                wrap_file(source, staged, preprocessing, resolution)
            except (ValueError, onnx.checker.ValidationError) as exc:
                raise StoreError(f"{source}: cannot put the uint8 input in front of it ({exc})") from exc
        else:
            shutil.copyfile(source, staged)
        try:
            ort.InferenceSession(str(staged), session_options(1), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise StoreError(f"{source}: onnxruntime cannot load it") from exc
        # The hash is taken of the file as served, after any wrapping.
        digest = sha256_file(staged)
        file_name = f"{name}.{digest[:12]}.onnx"
        variant = Variant(
            name=name,
            family=family,
            resolution=resolution,
            precision=precision,
            file=file_name,
            sha256=digest,
            size_bytes=staged.stat().st_size,
            params=facts.params,
            macs=facts.macs,
            input=image_input(facts.input_name, resolution),
            output_name=facts.output_name,
            preprocessing=preprocessing,
            top1=top1,
            top1_source="published" if top1 is not None else None,
        )
        staged.chmod(0o644)  # NamedTemporaryFile is private; the server may run as another user
        staged.replace(store_root / file_name)
        try:
            return store.write(Manifest(variants=(*store.manifest.variants, variant)))
        except BaseException:
            (store_root / file_name).unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
