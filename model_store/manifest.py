"""The store manifest: one schema shared by the builder and the server (pydantic only).

A store is a directory holding ONNX files and one ``manifest.json``. Every variant entry is
complete on its own, so a server can serve any subset of the store without reading anything else.
Schema 3 added the confidence-cascade plans (``cascades``). Schema 4 added shared weights files
(``Variant.weights``); a schema 2 or 3 manifest reads as one whose variants each hold their own
weights. Schema 5 added the reference set (``Manifest.reference``) and each int8 variant's record
against it (``Variant.int8_check``); a schema 2-4 manifest reads as one without them (its int8
variants are not re-checked on a device). Schema 6 replaced the plans with the variants' recorded
answers (``Manifest.answers``), from which each server plans cascades among the variants it
serves, at its own latencies; a schema 3-5 manifest's plans, made for the building machine's
variants and latencies, are dropped on reading (no cascades until ``edgefit store cascades``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[6] = 6
# Versions this edgefit reads: 2 is 3 without ``cascades``, 3 is 4 without ``weights``, 4 is 5
# without ``reference`` and ``int8_check``, 5 is 6 with ``cascades`` instead of ``answers``.
READABLE_VERSIONS = (2, 3, 4, 5, 6)
MANIFEST_NAME = "manifest.json"

# Names become file names, URL parameters and metric label values: keep them boring.
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

Precision = Literal["fp32", "int8"]
Top1Source = Literal["published", "measured", "derived"]


def check_safe_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe store name; raise ``ValueError`` saying why not."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


class Preprocessing(BaseModel):
    """How an image becomes the model's input.

    On the host (``model_store.imaging``) the shorter side is resized to ``resize_shorter`` and the
    centre ``crop`` x ``crop`` square is kept, as ``uint8`` RGB. Inside the model's graph
    (``model_store.image_input``) pixel values in 0..255 are put in ``channel_order`` and
    normalised as ``(x - mean) / std`` per channel: these fields record what the graph applies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize_shorter: int = Field(gt=0)
    crop: int = Field(gt=0)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB", "BGR"] = "RGB"

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop > self.resize_shorter:
            raise ValueError("crop must not exceed resize_shorter")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


class ModelInput(BaseModel):
    """The model's one input, so outside tools can feed it: the cropped image, ``uint8`` NHWC RGB."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    # [-1 (any batch), H, W, 3]
    shape: tuple[int, int, int, int]


class Subnet(BaseModel):
    """Which blocks of its family's network a subnet keeps (the others are skipped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kept_blocks: tuple[int, ...] = Field(min_length=1)
    total_blocks: int = Field(gt=0)

    @model_validator(mode="after")
    def _blocks_exist(self) -> Subnet:
        blocks = self.kept_blocks
        if list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] >= self.total_blocks:
            raise ValueError(f"kept_blocks must be increasing block indices in 0..{self.total_blocks - 1}")
        return self


class StoredFile(BaseModel):
    """A file of the store besides a variant's own model file, named with its sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)

    @field_validator("file")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value)


class Weights(StoredFile):
    """A weights file that variants cut from one network share: their ONNX files keep the graph
    and refer to tensors in it (ONNX external data, located by this file name alone)."""


class Reference(StoredFile):
    """The reference set: a few held-out images of the store's evaluation, re-encoded small in one
    file (``model_store.reference``), on which each int8 variant is re-checked on a device."""

    images: int = Field(gt=0)


class Answers(StoredFile):
    """Each variant's answers on a labelled sample (``dataset``, ``images`` in its sorted order):
    its top softmax score and whether its top-1 was right, image by image, in one JSON file
    (``model_store.planning``). A server plans its confidence cascades from them among the
    variants it serves; an entry counts only for the variant file it was recorded with."""

    dataset: str
    images: int = Field(gt=0)


class Int8Check(BaseModel):
    """What an int8 variant is re-checked against on a device: its fp32 ``twin``'s top-1 answer on
    each reference image, and its own (``answers``) where it was built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    twin: str
    twin_answers: tuple[int, ...] = Field(min_length=1)
    answers: tuple[int, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _paired(self) -> Int8Check:
        if len(self.answers) != len(self.twin_answers):
            raise ValueError("an int8 check has its answer and its twin's for each reference image")
        return self

    def agreeing(self, answers: Sequence[int]) -> int:
        """Reference images on which ``answers`` give the twin's class."""
        return sum(a == b for a, b in zip(answers, self.twin_answers, strict=True))

    @property
    def agreed(self) -> int:
        """Reference images on which it agreed with its twin where it was built."""
        return self.agreeing(self.answers)


def depth_tag(subnet: Subnet | None) -> str:
    """``d17`` for a subnet keeping 17 blocks, ``full`` for a full-depth variant."""
    return "full" if subnet is None else f"d{len(subnet.kept_blocks)}"


class Variant(BaseModel):
    """One servable model: an architecture at one input resolution and precision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: str
    resolution: int = Field(gt=0)
    precision: Precision
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # What the variant needs on disk and in memory: its file, plus the tensors of a shared
    # weights file it uses.
    size_bytes: int = Field(gt=0)
    # Set when the file's tensors are in a weights file shared with other variants.
    weights: Weights | None = None
    params: int | None = Field(default=None, ge=0)
    macs: int | None = Field(default=None, ge=0)
    input: ModelInput
    output_name: str
    preprocessing: Preprocessing
    labels: str = "imagenet-1k"
    # Set for a subnet cut from its family's network; None for a full-depth variant.
    subnet: Subnet | None = None
    top1: float | None = Field(default=None, ge=0.0, le=1.0)
    top1_source: Top1Source | None = None
    top1_dataset: str | None = None
    # The variant whose published figure a ``derived`` top1 starts from.
    top1_base: str | None = None
    # Raw top-1 measured by this store's own evaluation, per labelled data set.
    evaluations: dict[str, float] = Field(default_factory=dict)
    # An int8 variant's record against the store's reference set; None: not re-checked.
    int8_check: Int8Check | None = None

    @field_validator("name", "file", "family")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value)

    @model_validator(mode="after")
    def _honest_top1(self) -> Variant:
        if (self.top1 is None) != (self.top1_source is None):
            raise ValueError(f"{self.name}: top1 and top1_source must be given together")
        if self.top1_source in ("measured", "derived") and not self.top1_dataset:
            raise ValueError(f"{self.name}: a {self.top1_source} top1 must name its top1_dataset")
        if self.top1_source == "derived" and not self.top1_base:
            raise ValueError(f"{self.name}: a derived top1 must name its top1_base")
        if self.preprocessing.crop != self.resolution:
            raise ValueError(f"{self.name}: preprocessing.crop must equal resolution")
        if self.input.shape != (-1, self.resolution, self.resolution, 3):
            raise ValueError(f"{self.name}: input.shape must be [-1, resolution, resolution, 3]")
        if self.int8_check is not None and self.precision != "int8":
            raise ValueError(f"{self.name}: only an int8 variant has an int8_check")
        if self.subnet is not None and f"-{depth_tag(self.subnet)}-" not in self.name:
            raise ValueError(
                f"{self.name}: a subnet's name carries its depth tag, -{depth_tag(self.subnet)}-"
            )
        return self


class Manifest(BaseModel):
    """The whole store: schema version, the variants in no particular order, the reference set
    and the variants' recorded answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[2, 3, 4, 5, 6] = SCHEMA_VERSION
    variants: tuple[Variant, ...] = ()
    reference: Reference | None = None
    answers: Answers | None = None

    @model_validator(mode="before")
    @classmethod
    def _without_plans(cls, data: Any) -> Any:
        """A schema 3-5 manifest's plans are dropped (see the module's note)."""
        if isinstance(data, dict) and data.get("schema_version") in (3, 4, 5):
            return {k: v for k, v in data.items() if k != "cascades"}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variant names: {', '.join(duplicates)}")
        checked = [v for v in self.variants if v.int8_check is not None]
        if checked and self.reference is None:
            raise ValueError("int8 checks need the reference set they were recorded on")
        images = self.reference.images if self.reference else 0
        for v in self.variants:
            if v.int8_check is not None and len(v.int8_check.twin_answers) != images:
                raise ValueError(f"{v.name}: int8_check has an answer per reference image")
        return self

    def variant(self, name: str) -> Variant:
        """Return the variant called ``name``; raise ``KeyError`` if there is none."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def replace(self, *updated: Variant) -> Manifest:
        """Return a manifest with ``updated`` variants replacing (or added after) same-named ones.
        (A replaced variant's recorded answers no longer count: they name the file they came from.)"""
        by_name = {v.name: v for v in self.variants}
        by_name.update({v.name: v for v in updated})
        return Manifest(variants=tuple(by_name.values()), reference=self.reference, answers=self.answers)
