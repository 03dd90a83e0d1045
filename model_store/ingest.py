"""``edgefit store add``: a ladder of variants from one model exported elsewhere.

The source is one self-contained ONNX file taking the image as float ``[N, 3, H, W]`` (the usual
export; H and W may be dynamic) or as ``uint8 [N, H, W, 3]`` RGB. For each requested resolution
it becomes an fp32 variant taking the served ``uint8`` NHWC input (``model_store.image_input``
puts the preprocessing's normalisation in front of a float model) and, on request, an int8 twin
from the same quantiser and agreement gate as ``store build`` (``model_store.quantize``). A
source that is already quantised is stored as int8, as it is.

Accuracy is measured on a labelled folder if one is given (``top1_source: measured``, the data set
named); otherwise it stays unknown, unless the user gives the figure published for the checkpoint.
Everything is staged and checked inside the store first; the manifest swap is the commit, so a
refused model leaves the store as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from model_store.evaluate import IMAGE_SUFFIXES, MAX_PIXELS, evaluate, labelled_images, record
from model_store.image_input import image_input, with_image_input
from model_store.imaging import ImageError, load_tensor
from model_store.labels import IMAGENET, imagenet_classes, label_file_name, parse_label_file
from model_store.manifest import Manifest, Precision, Preprocessing, Variant, check_safe_name
from model_store.onnx_facts import OnnxFacts, read_facts
from model_store.presets import PRESETS, PreprocessSpec
from model_store.quantize import DEFAULT_MIN_AGREEMENT, passes_agreement_gate, quantize_int8
from model_store.runner import VariantRunner, session_options, top_k
from model_store.store import Store, StoreError, open_store, sha256_file

log = logging.getLogger(__name__)

# Enough to calibrate activation ranges of a compact CNN (the builder uses 100); taken evenly
# from the calibration folder.
CALIBRATION_IMAGES = 100
# Ops that only a quantised graph holds: such a source is stored as int8, as it is.
_QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}

Progress = Callable[[str, int, int], None]  # (stage, done, total)


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


def _refuse(source: Path, why: str) -> StoreError:
    return StoreError(f"{source}: {why}")


def _check_request(request: AddRequest, store: Store) -> None:
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


def _read_labels(request: AddRequest) -> tuple[str, tuple[str, ...], bytes | None]:
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


def _takes_float_nchw(facts: OnnxFacts) -> bool:
    shape = facts.input_shape
    return len(shape) == 4 and shape[1] == 3 and facts.input_elem_type == onnx.TensorProto.FLOAT


def _takes_uint8_nhwc(facts: OnnxFacts) -> bool:
    shape = facts.input_shape
    return len(shape) == 4 and shape[3] == 3 and facts.input_elem_type == onnx.TensorProto.UINT8


def _validate(source: Path, request: AddRequest, classes: int) -> tuple[OnnxFacts, onnx.ModelProto, bool]:
    """The source's facts, its graph and whether it is quantised already.

    Raises ``StoreError`` saying in one line what is wrong.
    """
    if not source.is_file():
        raise _refuse(source, "no such file")
    try:
        facts = read_facts(source)
    except ValueError as exc:
        raise _refuse(source, str(exc)) from exc
    except (onnx.checker.ValidationError, OSError) as exc:
        raise _refuse(source, f"not a readable ONNX model ({type(exc).__name__})") from exc
    except Exception as exc:  # protobuf's DecodeError and friends: a corrupt file
        raise _refuse(source, "not a readable ONNX model") from exc
    if facts.external_data:
        raise _refuse(source, "keeps weights in external data files; export one self-contained file")
    shape = list(facts.input_shape)
    if _takes_float_nchw(facts):
        sides = shape[2:]
    elif _takes_uint8_nhwc(facts):
        sides = shape[1:3]
    else:
        dtype = onnx.TensorProto.DataType.Name(facts.input_elem_type).lower()
        raise _refuse(
            source,
            f"input {facts.input_name} is {dtype} {shape}, not an image: "
            "expected float [N, 3, H, W] or uint8 [N, H, W, 3]",
        )
    for resolution in request.resolutions:
        if any(isinstance(side, int) and side != resolution for side in sides):
            raise _refuse(
                source,
                f"input is {shape}, which does not take {resolution}x{resolution}; "
                "export with dynamic height and width for a ladder",
            )
    output = list(facts.output_shape)
    if len(output) != 2:
        raise _refuse(source, f"output {facts.output_name} has shape {output}; expected [N, classes]")
    if isinstance(output[1], int) and output[1] != classes:
        raise _refuse(source, f"output has {output[1]} classes but the labels name {classes}")
    model = onnx.load(str(source))
    quantised = any(node.op_type in _QUANTISED_OPS for node in model.graph.node)
    if quantised and request.precisions != ("int8",):
        raise _refuse(source, "is already quantised: add it with --precisions int8 (stored as it is)")
    return facts, model, quantised


def _run_once(path: Path, source: Path, input_name: str, resolution: int, classes: int) -> None:
    """Load the variant in onnxruntime and run it once: it must give ``[1, classes]`` scores."""
    try:
        session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        (scores,) = session.run(None, {input_name: np.zeros((1, resolution, resolution, 3), np.uint8)})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise _refuse(source, f"onnxruntime cannot run it at {resolution}x{resolution} ({first})") from exc
    if np.asarray(scores).shape != (1, classes):
        raise _refuse(
            source,
            f"gives scores of shape {list(np.asarray(scores).shape)} at {resolution}x{resolution}; "
            f"expected [1, {classes}] (one per label)",
        )


def _calibration_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise StoreError(f"no images in {directory} to calibrate int8 with")
    step = max(1, len(files) // CALIBRATION_IMAGES)
    return files[::step][:CALIBRATION_IMAGES]


def _tensors(files: Sequence[Path], preprocessing: Preprocessing) -> list[np.ndarray]:
    tensors = []
    for path in files:
        try:
            tensors.append(load_tensor(path.read_bytes(), preprocessing, MAX_PIXELS))
        except ImageError as exc:
            raise StoreError(f"{path}: {exc}") from None
    return tensors


def _place(staged: Path, staging: Path, name: str) -> tuple[str, str]:
    """Give a staged file its content-addressed name; return ``(file name, sha256)``."""
    digest = sha256_file(staged)
    file_name = f"{name}.{digest[:12]}.onnx"
    staged.rename(staging / file_name)
    return file_name, digest


def add(store_root: Path, source: Path, request: AddRequest, progress: Progress | None = None) -> Store:
    """Build ``request``'s variants from ``source`` into the store. Raises ``StoreError``."""
    report = progress or (lambda stage, done, total: None)
    store = open_store(store_root, missing_ok=True)
    _check_request(request, store)
    labels_ref, classes, label_data = _read_labels(request)
    facts, model, source_int8 = _validate(source, request, len(classes))
    calibration = None
    if "int8" in request.precisions and not source_int8:
        if request.calibration_dir is None:
            raise StoreError("int8 needs --calibration DIR: images like those the model will see")
        calibration = _calibration_files(request.calibration_dir)
    images = None
    if request.evaluate_dir is not None:
        images = labelled_images(request.evaluate_dir, None if label_data is None else classes)
        dataset = request.dataset or request.evaluate_dir.name

    store_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store_root))
    moved: list[Path] = []
    try:
        variants: list[Variant] = []
        steps = len(request.resolutions)
        for done, resolution in enumerate(request.resolutions):
            report("convert + quantize", done, steps)
            variants += _stage_resolution(
                source, model, facts, request, resolution, len(classes), labels_ref, staging, calibration
            )
        report("convert + quantize", steps, steps)
        staged = Store(staging, Manifest(variants=tuple(variants)))
        manifest = staged.manifest
        predictions: dict[str, tuple[int, ...]] = {}
        if images is not None:
            evaluated = 0

            def advance(n: int) -> None:
                nonlocal evaluated
                evaluated += n
                report(f"evaluate on {dataset}", evaluated, len(images) * len(variants))

            results = evaluate(staged, variants, images, progress=advance)
            manifest = record(manifest, dataset, results)
            predictions = {r.variant: r.predictions for r in results}
        elif calibration is not None:
            # Without labelled images the gate compares the twins on the calibration images.
            predictions = _predictions(staged, variants, calibration)
        # The fp32 twin of an int8-only request was built for the gate alone.
        manifest = Manifest(
            variants=tuple(
                v for v in _gate(manifest, request, predictions).variants if v.precision in request.precisions
            )
        )

        # Commit: move files in, then swap the manifest.
        if label_data is not None:
            labels_path = store_root / labels_ref
            if not labels_path.exists():
                (staging / labels_ref).write_bytes(label_data)
                (staging / labels_ref).chmod(0o644)
                (staging / labels_ref).replace(labels_path)
                moved.append(labels_path)
        for variant in manifest.variants:
            (staging / variant.file).chmod(0o644)
            (staging / variant.file).replace(store_root / variant.file)
            moved.append(store_root / variant.file)
        return store.write(Manifest(variants=(*store.manifest.variants, *manifest.variants)))
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_resolution(
    source: Path,
    model: onnx.ModelProto,
    facts: OnnxFacts,
    request: AddRequest,
    resolution: int,
    classes: int,
    labels_ref: str,
    staging: Path,
    calibration: list[Path] | None,
) -> list[Variant]:
    """The variants of one resolution, staged and run once each."""
    preprocessing = request.preprocess.at(resolution)
    base: Precision = "fp32" if calibration is not None or "fp32" in request.precisions else "int8"
    first_path = staging / f"{resolution}-{base}.onnx"
    if _takes_float_nchw(facts):
        try:
            onnx.save(with_image_input(model, preprocessing, resolution), str(first_path))
        except (ValueError, onnx.checker.ValidationError) as exc:
            raise _refuse(source, f"cannot put the uint8 input in front of it ({exc})") from exc
    else:
        shutil.copyfile(source, first_path)
    _run_once(first_path, source, facts.input_name, resolution, classes)
    # MACs depend on the resolution: count them on this variant's graph, whose input is fixed.
    served = read_facts(first_path)
    macs = served.macs if all(isinstance(d, int) and d > 0 for d in served.input_shape[1:]) else None

    staged: list[tuple[Precision, Path]] = [(base, first_path)]
    if calibration is not None:
        int8_path = staging / f"{resolution}-int8.onnx"
        tensors = _tensors(calibration, preprocessing)
        try:
            quantize_int8(first_path, int8_path, facts.input_name, tensors)
        except Exception as exc:  # onnxruntime's quantiser raises many kinds
            raise _refuse(source, f"int8 quantisation failed at {resolution} ({type(exc).__name__})") from exc
        _run_once(int8_path, source, facts.input_name, resolution, classes)
        staged.append(("int8", int8_path))
    variants = []
    for precision, path in staged:
        name = request.name(resolution, precision)
        file_name, digest = _place(path, staging, name)
        size = (staging / file_name).stat().st_size
        variants.append(
            _variant(request, resolution, precision, file_name, digest, size, facts, macs, labels_ref)
        )
    return variants


def _variant(
    request: AddRequest,
    resolution: int,
    precision: Precision,
    file_name: str,
    digest: str,
    size: int,
    facts: OnnxFacts,
    macs: int | None,
    labels_ref: str,
) -> Variant:
    published = request.top1 is not None and precision == "fp32"
    return Variant(
        name=request.name(resolution, precision),
        family=request.family,
        resolution=resolution,
        precision=precision,
        file=file_name,
        sha256=digest,
        size_bytes=size,
        params=facts.params,
        macs=macs,
        input=image_input(facts.input_name, resolution),
        output_name=facts.output_name,
        preprocessing=request.preprocess.at(resolution),
        labels=labels_ref,
        top1=request.top1 if published else None,
        top1_source="published" if published else None,
    )


def _predictions(
    store: Store, variants: Sequence[Variant], files: Sequence[Path]
) -> dict[str, tuple[int, ...]]:
    """Each variant's top-1 class on ``files``."""
    result = {}
    for variant in variants:
        runner = VariantRunner(store.verify(variant), variant, threads=1)
        result[variant.name] = tuple(
            top_k(runner.infer(t), 1)[0][0] for t in _tensors(files, variant.preprocessing)
        )
    return result


def _gate(manifest: Manifest, request: AddRequest, predictions: dict[str, tuple[int, ...]]) -> Manifest:
    """Drop the int8 variants built here that disagree with their fp32 twins."""
    kept = []
    for variant in manifest.variants:
        twin = request.name(variant.resolution, "fp32")
        if variant.precision == "int8" and twin in predictions:
            gate = (variant.name, twin, predictions[variant.name], predictions[twin], request.min_agreement)
            if not passes_agreement_gate(*gate):
                continue
        kept.append(variant)
    return Manifest(variants=tuple(kept))
