"""``edgefit store build``: export, verify, quantise and evaluate the default ladder.

The store is a pool of candidates for whatever device serves it, not the frontier of the machine
that builds it: every resolution of the ladder is written in fp32 and in int8, however fast each
is here. Everything is produced in a staging directory inside the store and checked there: every
fp32 export against PyTorch (a mismatch fails the build); every int8 variant's top-1 agreement
with its fp32 twin is logged, not used to drop it (int8 kernels round differently from one CPU
to another: the device that serves the pool judges). Each family's variants of one precision keep
their tensors in one weights file (``model_store.build.shared_weights``). Files get
content-addressed names, so moving them in never touches a file the current manifest names; the
manifest swap is the commit, and files nothing names any more are removed after it. A failed
build leaves the previous store as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from model_store.answers import AnswerCache
from model_store.build.export import INPUT_NAME, OUTPUT_NAME, export_onnx, load_pretrained, parity_error
from model_store.build.recipes import (
    CALIBRATION_IMAGES,
    LADDER,
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    Recipe,
    lite_preprocessing,
    variant_name,
)
from model_store.build.shared_weights import share_weights
from model_store.build.subnets import SubnetModule
from model_store.evaluate import (
    MAX_PIXELS,
    LabelledImage,
    Progress,
    evaluate,
    held_out_half,
    labelled_images,
    record,
    stage_progress,
)
from model_store.image_input import image_input, wrap_file
from model_store.imaging import load_tensor
from model_store.manifest import Manifest, Precision, Reference, Subnet, Variant
from model_store.onnx_facts import OnnxFacts, read_facts
from model_store.quantize import DEFAULT_MIN_AGREEMENT, agreement, quantize_int8
from model_store.reference import record_int8_checks, reference_images, write_reference
from model_store.runner import VariantRunner
from model_store.store import Store, StoreError, open_store, sha256_file

log = logging.getLogger(__name__)

# Logits of a resolution on the shared file against its own export (``share_one_file``).
SHARING_TOLERANCE = 1e-5


def every_nth(images: list[LabelledImage], count: int) -> list[LabelledImage]:
    step = max(1, len(images) // count)
    return images[::step][:count]


def _place(staged: Path, store_root: Path, name: str) -> tuple[str, str]:
    """Move a staged file to its content-addressed name; return ``(file name, sha256)``."""
    digest = sha256_file(staged)
    file_name = f"{name}.{digest[:12]}.onnx"
    staged.rename(staged.with_name(file_name))
    return file_name, digest


def build_pair(
    recipe: Recipe,
    resolution: int,
    staging: Path,
    images: list[LabelledImage],
    subnet: Subnet | None = None,
    quantize: bool = True,
) -> list[Variant]:
    """Export, check and quantise one network at one resolution: its fp32 and int8 entries
    (only the fp32 one without ``quantize``).

    ``subnet`` cuts a subnet from the checkpoint (``model_store.build.subnets``); it is exported and
    checked against its own PyTorch module exactly as a full-depth network is.
    """
    preprocessing = lite_preprocessing(resolution)
    fp32_name = variant_name(recipe.arch, resolution, "fp32", subnet)
    int8_name = variant_name(recipe.arch, resolution, "int8", subnet)

    model = load_pretrained(recipe, resolution)
    if subnet is not None:
        model = SubnetModule(model, subnet)
    fp32_path = staging / f"{fp32_name}.onnx"
    facts = _export_checked(model, resolution, fp32_path, images)

    pairs: list[tuple[str, Precision, Path]] = [(fp32_name, "fp32", fp32_path)]
    if quantize:
        calibration = [
            load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS)
            for i in every_nth(images, CALIBRATION_IMAGES)
        ]
        int8_path = staging / f"{int8_name}.onnx"
        quantize_int8(fp32_path, int8_path, INPUT_NAME, calibration)
        pairs.append((int8_name, "int8", int8_path))

    return [
        _entry(recipe, resolution, name, precision, *_place(path, staging, name), staging, facts, subnet)
        for name, precision, path in pairs
    ]


def _export_checked(model: nn.Module, resolution: int, path: Path, images: list[LabelledImage]) -> OnnxFacts:
    """Export ``model`` to ``path`` with the served input in front; refused (``StoreError``) unless
    onnxruntime gives PyTorch's logits on a few of ``images``."""
    preprocessing = lite_preprocessing(resolution)
    export_onnx(model, resolution, path)
    # Params and MACs are properties of the architecture: count them on the exported graph.
    facts = read_facts(path)
    wrap_file(path, path, preprocessing, resolution)
    parity_images = every_nth(images, PARITY_IMAGES)
    tensors = [load_tensor(i.path.read_bytes(), preprocessing, MAX_PIXELS) for i in parity_images]
    error = parity_error(model, path, tensors, preprocessing)
    if error > PARITY_TOLERANCE:
        raise StoreError(
            f"{path.stem}: onnxruntime differs from PyTorch by {error:.2e} "
            f"(limit {PARITY_TOLERANCE:.0e}); not written"
        )
    log.info("%s: export matches PyTorch (max |Δlogit| %.1e)", path.stem, error)
    return facts


def _entry(
    recipe: Recipe,
    resolution: int,
    name: str,
    precision: Precision,
    file_name: str,
    digest: str,
    staging: Path,
    facts: OnnxFacts,
    subnet: Subnet | None,
) -> Variant:
    """The manifest entry of one staged file; only the full network at its native resolution,
    in fp32, carries the published top-1."""
    published = precision == "fp32" and resolution == recipe.native_resolution and subnet is None
    return Variant(
        name=name,
        family=recipe.family,
        resolution=resolution,
        precision=precision,
        file=file_name,
        sha256=digest,
        size_bytes=(staging / file_name).stat().st_size,
        params=facts.params,
        macs=facts.macs,
        input=image_input(INPUT_NAME, resolution),
        output_name=OUTPUT_NAME,
        preprocessing=lite_preprocessing(resolution),
        subnet=subnet,
        top1=recipe.published_top1 if published else None,
        top1_source="published" if published else None,
        top1_base=None if published else variant_name(recipe.arch, recipe.native_resolution, "fp32"),
    )


def share_one_file(
    recipe: Recipe, variants: list[Variant], staging: Path, images: list[LabelledImage]
) -> list[Variant]:
    """Serve the family's full-depth fp32 resolutions from one file: its largest export with
    height and width left free. A server then holds one session, not one per resolution
    (the weights are the same, and every session holds its own copy of them).

    The static "same" padding of these networks is computed per resolution, so sharing is
    checked, not assumed: a resolution moves to the shared file only if its logits there equal
    those of its own export on the parity images (the same kernels run, so they agree exactly);
    one that differs keeps its own file.
    """
    ladder = sorted(
        (v for v in variants if v.precision == "fp32" and v.subnet is None), key=lambda v: v.resolution
    )
    if len(ladder) < 2:
        return variants
    shared_path = staging / f"{recipe.arch}-fp32.onnx"
    model = onnx.load(str(staging / ladder[-1].file))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "height", "width"
    del model.graph.value_info[:]  # intermediate shapes of the one resolution it was exported at
    onnx.save(model, str(shared_path))
    shared = VariantRunner(shared_path.read_bytes(), ladder[-1])
    moving = []
    for v in ladder:
        own = VariantRunner((staging / v.file).read_bytes(), v)
        tensors = [
            load_tensor(i.path.read_bytes(), v.preprocessing, MAX_PIXELS)
            for i in every_nth(images, PARITY_IMAGES)
        ]
        error = max(float(np.max(np.abs(shared.infer(t) - own.infer(t)))) for t in tensors)
        if error > SHARING_TOLERANCE:
            log.info("%s keeps its own file: the shared graph differs by %.1e", v.name, error)
        else:
            moving.append(v.name)
    if len(moving) < 2:
        return variants
    file_name, digest = _place(shared_path, staging, f"{recipe.arch}-fp32")
    size = (staging / file_name).stat().st_size
    log.info("%s: one file, %s", ", ".join(moving), file_name)
    return [
        v.model_copy(update={"file": file_name, "sha256": digest, "size_bytes": size})
        if v.name in moving
        else v
        for v in variants
    ]


def build(
    store_root: Path, images_dir: Path, progress: Progress, answers: AnswerCache | None = None
) -> Store:
    """Build the default ladder into ``store_root`` (keeping any other variants already there,
    except the ladder families' subnets); each variant's answers on the images go to ``answers``.

    Raises ``StoreError`` when an input is missing or a check fails.
    """
    images = labelled_images(images_dir)
    dataset = images_dir.name
    previous = open_store(store_root, missing_ok=True)
    store_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store_root))
    try:
        steps = sum(len(r.resolutions) for r in LADDER)
        variants: list[Variant] = []
        for recipe in LADDER:
            family: list[Variant] = []
            for resolution in recipe.resolutions:
                progress("export + quantize", len(variants) // 2, steps)
                family += build_pair(recipe, resolution, staging, images)
            variants += share_one_file(recipe, family, staging, images)
        progress("export + quantize", steps, steps)
        # Evaluated as written: on the shared weights files.
        variants = share_weights(staging, variants, "ladder")

        staged = Store(staging, Manifest(variants=tuple(variants)))
        advance = stage_progress(progress, f"evaluate on {dataset}", len(images) * len(variants))
        results = evaluate(staged, variants, images, progress=advance)
        if answers is not None:
            for variant, result in zip(variants, results, strict=True):
                answers.remember(variant, images, result)
        manifest = record(staged.manifest, dataset, results)
        log_int8_agreement(manifest, {r.variant: r.predictions for r in results})
        reference = write_reference(staging, held_out_half(images))
        staged = Store(staging, manifest.model_copy(update={"reference": reference}))
        manifest = record_int8_checks(staged, reference_images(staged))

        # A subnet's derived top1 refers to its base's measurements, which this build replaced:
        # the family's subnets go too (``edgefit store specialize`` cuts them again).
        families = {r.family for r in LADDER}
        subnets = {
            v.name for v in previous.manifest.variants if v.subnet is not None and v.family in families
        }
        return commit(previous, staging, manifest.variants, {v.name for v in variants} | subnets, reference)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(
    previous: Store,
    staging: Path,
    variants: Sequence[Variant],
    replacing: Iterable[str],
    reference: Reference | None = None,
) -> Store:
    """Move ``variants``' staged files in and swap the manifest: ``variants`` replace same-named
    entries and the entries named in ``replacing`` go. Then files nothing names any more go.

    A variant already in the store (its file not in ``staging``) may be passed to update its entry.
    The recorded answers stay; a variant's count only for the file they were recorded from.
    ``reference``, staged, replaces the store's reference set; kept variants checked on another
    set lose their ``int8_check`` (their twins' answers were on other images).
    """
    for variant in variants:
        for file in (variant.file, variant.weights.file if variant.weights else None):
            if file is not None and (staging / file).exists():
                (staging / file).replace(previous.root / file)
    if reference is not None and (staging / reference.file).exists():
        (staging / reference.file).replace(previous.root / reference.file)
    reference = reference or previous.manifest.reference
    gone = set(replacing) | {v.name for v in variants}
    kept = [
        v if reference == previous.manifest.reference else v.model_copy(update={"int8_check": None})
        for v in previous.manifest.variants
        if v.name not in gone
    ]
    store = previous.write(
        Manifest(variants=(*kept, *variants), reference=reference, answers=previous.manifest.answers)
    )
    _remove_unreferenced(store)
    return store


def log_int8_agreement(manifest: Manifest, predictions: dict[str, tuple[int, ...]]) -> None:
    """Log how often each int8 variant of ``manifest`` gives its fp32 twin's top-1 class
    (``predictions`` holds both, image by image). Nothing is dropped: how well int8 agrees
    depends on the CPU's int8 kernels, so the device that serves the pool decides."""
    for variant in manifest.variants:
        twin = variant.name.removesuffix("-int8") + "-fp32"
        if variant.precision != "int8" or twin not in predictions:
            continue
        share = agreement(predictions[variant.name], predictions[twin])
        below = (
            f" (below {DEFAULT_MIN_AGREEMENT:.0%} here: kept in the pool)"
            if share < DEFAULT_MIN_AGREEMENT
            else ""
        )
        log.info(
            "%s: top-1 agrees with %s on %.1f%% of %d images%s",
            variant.name, twin, 100 * share, len(predictions[twin]), below,
        )  # fmt: skip


def _remove_unreferenced(store: Store) -> None:
    named = store.files()
    for path in [
        *store.root.glob("*.onnx"),
        *store.root.glob("*.weights"),
        *store.root.glob("reference.*.zip"),
        *store.root.glob("answers.*.json"),
    ]:
        if path.name not in named:
            path.unlink()
