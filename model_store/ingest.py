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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from model_store.add_request import (
    AddRequest,
    check_request,
    read_labels,
    refuse,
    run_once,
    takes_float_nchw,
    validate_source,
)
from model_store.evaluate import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    LabelledImage,
    Progress,
    evaluate,
    labelled_images,
    record,
    stage_progress,
)
from model_store.image_input import image_input, with_image_input
from model_store.imaging import ImageError, load_tensor
from model_store.manifest import Manifest, Precision, Preprocessing, Variant
from model_store.onnx_facts import OnnxFacts, read_facts
from model_store.quantize import passes_agreement_gate, quantize_int8
from model_store.runner import VariantRunner, top_k
from model_store.store import Store, StoreError, open_store, sha256_file

log = logging.getLogger(__name__)

# Enough to calibrate activation ranges of a compact CNN (the builder uses 100); taken evenly
# from the calibration folder.
CALIBRATION_IMAGES = 100


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
    check_request(request, store)
    labels_ref, classes, label_data = read_labels(request)
    facts, model, source_int8 = validate_source(source, request, len(classes))
    calibration = None
    if "int8" in request.precisions and not source_int8:
        if request.calibration_dir is None:
            raise StoreError("int8 needs --calibration DIR: images like those the model will see")
        calibration = _calibration_files(request.calibration_dir)
    images = None
    dataset = ""
    if request.evaluate_dir is not None:
        images = labelled_images(request.evaluate_dir, None if label_data is None else classes)
        dataset = request.dataset or request.evaluate_dir.name

    store_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store_root))
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
        manifest = _checked(staged, request, images, dataset, calibration, report)
        return _commit(store, staging, manifest, labels_ref, label_data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked(
    staged: Store,
    request: AddRequest,
    images: Sequence[LabelledImage] | None,
    dataset: str,
    calibration: Sequence[Path] | None,
    report: Progress,
) -> Manifest:
    """The staged variants that pass the int8 gate, of the precisions asked for; their ``top1``
    measured on ``images`` when given."""
    variants = list(staged.manifest.variants)
    manifest = staged.manifest
    predictions: dict[str, tuple[int, ...]] = {}
    if images is not None:
        advance = stage_progress(report, f"evaluate on {dataset}", len(images) * len(variants))
        results = evaluate(staged, variants, images, progress=advance)
        manifest = record(manifest, dataset, results)
        predictions = {r.variant: r.predictions for r in results}
    elif calibration is not None:
        # Without labelled images the gate compares the twins on the calibration images.
        predictions = _predictions(staged, variants, calibration)
    # The fp32 twin of an int8-only request was built for the gate alone.
    return Manifest(
        variants=tuple(
            v for v in _gate(manifest, request, predictions).variants if v.precision in request.precisions
        )
    )


def _commit(
    store: Store, staging: Path, manifest: Manifest, labels_ref: str, label_data: bytes | None
) -> Store:
    """Move the staged files in, then swap the manifest; on any failure the files moved in so far
    are removed again, leaving the store as it was."""
    moved: list[Path] = []
    try:
        if label_data is not None:
            labels_path = store.root / labels_ref
            if not labels_path.exists():
                (staging / labels_ref).write_bytes(label_data)
                (staging / labels_ref).chmod(0o644)
                (staging / labels_ref).replace(labels_path)
                moved.append(labels_path)
        for variant in manifest.variants:
            (staging / variant.file).chmod(0o644)
            (staging / variant.file).replace(store.root / variant.file)
            moved.append(store.root / variant.file)
        # The recorded answers stay: the added variants change none of them.
        return store.write(
            Manifest(
                variants=(*store.manifest.variants, *manifest.variants),
                reference=store.manifest.reference,
                answers=store.manifest.answers,
            )
        )
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise


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
    if takes_float_nchw(facts):
        try:
            onnx.save(with_image_input(model, preprocessing, resolution), str(first_path))
        except (ValueError, onnx.checker.ValidationError) as exc:
            raise refuse(source, f"cannot put the uint8 input in front of it ({exc})") from exc
    else:
        shutil.copyfile(source, first_path)
    run_once(first_path, source, facts.input_name, resolution, classes)
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
            raise refuse(source, f"int8 quantisation failed at {resolution} ({type(exc).__name__})") from exc
        run_once(int8_path, source, facts.input_name, resolution, classes)
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
        runner = VariantRunner.from_store(store, variant)
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
