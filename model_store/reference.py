"""The reference set a store carries, and each int8 variant's record against it.

int8 answers depend on the CPU that computes them: onnxruntime's u8 x s8 products take other
instructions, and can saturate, on a CPU without int8 dot products (AVX-512 VNNI, Arm's dot
product), so an int8 variant that agreed with its fp32 twin where the store was built may not on a
gateway. The store therefore carries a few held-out images, re-encoded small in one file, and for
each int8 variant its fp32 twin's top-1 answers on them and its own where it was built
(``Int8Check``). A server re-runs the int8 variant on them at its first start on a device; one
that agrees with its twin on clearly fewer images (``fails_here``) is not served there. fp32
answers hardly move between CPUs, so the twin need not run on the device.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from model_store.evaluate import LabelledImage
from model_store.imaging import load_tensor
from model_store.manifest import Int8Check, Manifest, Reference
from model_store.runner import VariantRunner, top_k
from model_store.store import Store, StoreError

REFERENCE_IMAGES = 64
# Re-encoded with this shorter side: above every ladder variant's resize, a few KB per image.
SHORTER_SIDE = 320
JPEG_QUALITY = 90
# Agreement lower than where the variant was built by more than this share of the images, and by
# more than MIN_FLIPS images, fails.
AGREEMENT_TOLERANCE = 0.05
MIN_FLIPS = 2
MAX_PIXELS = 1 << 20


def write_reference(directory: Path, images: Sequence[LabelledImage]) -> Reference:
    """``REFERENCE_IMAGES`` of ``images``, spread over them, re-encoded into one zip of JPEGs
    ``reference.{sha12}.zip`` in ``directory``. The same images give the same file."""
    step = max(1, len(images) // REFERENCE_IMAGES)
    jpegs = []
    for image in list(images[::step])[:REFERENCE_IMAGES]:
        with Image.open(image.path) as opened:
            picture = opened.convert("RGB")
        scale = SHORTER_SIDE / min(picture.size)
        picture = picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BICUBIC
        )
        encoded = io.BytesIO()
        picture.save(encoded, format="JPEG", quality=JPEG_QUALITY)
        jpegs.append(encoded.getvalue())
    return write_images(directory, jpegs)


def write_images(directory: Path, jpegs: Sequence[bytes]) -> Reference:
    """``jpegs`` as a reference set, ``reference.{sha12}.zip`` in ``directory``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for i, jpeg in enumerate(jpegs):
            # A fixed timestamp: the archive's bytes, and so its name, depend on the images only.
            archive.writestr(zipfile.ZipInfo(f"{i:03d}.jpeg", (1980, 1, 1, 0, 0, 0)), jpeg)
    data = out.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"reference.{digest[:12]}.zip"
    (directory / name).write_bytes(data)
    return Reference(file=name, sha256=digest, size_bytes=len(data), images=len(jpegs))


def reference_images(store: Store) -> list[bytes]:
    """The JPEGs of the store's reference set, verified, in order. Raises ``StoreError``, also
    when the store has none."""
    reference = store.manifest.reference
    if reference is None:
        raise StoreError(f"the store at {store.root} has no reference set (rebuild it)")
    data = store.verified("the reference set", reference.file, reference.sha256)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = sorted(archive.namelist())
            if len(names) != reference.images:
                raise StoreError(
                    f"{reference.file} holds {len(names)} images, the manifest says {reference.images}"
                )
            return [archive.read(name) for name in names]
    except (zipfile.BadZipFile, OSError) as exc:
        raise StoreError(f"{reference.file} is not a reference set: {exc}") from None


def answers(runner: VariantRunner, images: Sequence[bytes]) -> tuple[int, ...]:
    """The runner's variant's top-1 class on each image, through the serving preprocessing."""
    preprocessing = runner.variant.preprocessing
    return tuple(
        top_k(runner.infer(load_tensor(image, preprocessing, MAX_PIXELS)), 1)[0][0] for image in images
    )


def fails_here(check: Int8Check, agreed_here: int) -> bool:
    """Whether the int8 variant, agreeing with its twin on ``agreed_here`` reference images on this
    device, agrees on fewer than where it was built by more than ``AGREEMENT_TOLERANCE`` of them
    (and more than ``MIN_FLIPS``: on a handful of images one flip is no evidence)."""
    return check.agreed - agreed_here > max(MIN_FLIPS, AGREEMENT_TOLERANCE * len(check.twin_answers))


def record_int8_checks(staged: Store, images: Sequence[bytes]) -> Manifest:
    """``staged``'s manifest with each int8 variant whose fp32 twin (same name, ``-fp32``) it also
    holds checked on ``images``, the store's reference set (which the manifest names)."""
    manifest = staged.manifest
    names = {v.name for v in manifest.variants}
    checked = {}
    for int8 in manifest.variants:
        twin_name = int8.name.removesuffix("-int8") + "-fp32"
        if int8.precision != "int8" or twin_name not in names:
            continue
        ours = answers(VariantRunner.from_store(staged, int8), images)
        theirs = answers(VariantRunner.from_store(staged, manifest.variant(twin_name)), images)
        check = Int8Check(twin=twin_name, twin_answers=theirs, answers=ours)
        checked[int8.name] = int8.model_copy(update={"int8_check": check})
    variants = tuple(checked.get(v.name, v) for v in manifest.variants)
    return Manifest.model_validate(manifest.model_copy(update={"variants": variants}).model_dump())
