"""Preprocessing presets for ``edgefit store add``, so users need not hand-copy mean and std.

A preset holds what does not depend on the resolution (normalisation, interpolation, how the
crop relates to the resized image); :meth:`PreprocessSpec.at` gives the ``Preprocessing`` of one
variant. Values are in 0..255 pixel units, as the manifest records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import ValidationError

from model_store.manifest import Preprocessing

Interpolation = Literal["bilinear", "bicubic"]

# torchvision's (and timm's default) ImageNet normalisation, in 0..255 pixel units.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# EfficientNet-Lite's own input normalisation, (x - 127) / 128, and TF's evaluation crop, which
# keeps 32 pixels of padding around the crop; the default store is built with these too.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
CROP_PADDING = 32


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model's images are prepared, at any resolution.

    The shorter side is resized to ``resolution * resize / crop`` (rounded down, as timm does)
    when ``padding`` is None, else to ``resolution + padding`` (EfficientNet-Lite's TF recipe).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"
    resize: int = 256
    crop: int = 224
    padding: int | None = None

    def at(self, resolution: int) -> Preprocessing:
        """The variant's preprocessing. Raises ``ValueError`` saying what is impossible."""
        if self.padding is not None:
            shorter = resolution + self.padding
        else:
            shorter = math.floor(resolution * self.resize / self.crop)
        try:
            return Preprocessing(
                resize_shorter=shorter,
                crop=resolution,
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
            )
        except ValidationError as exc:
            raise ValueError(f"invalid preprocessing at {resolution}: {exc.errors()[0]['msg']}") from None

    def with_crop_ratio(self, resize: int, crop: int) -> PreprocessSpec:
        """This spec with the shorter side resized to ``resize`` for every ``crop`` cropped."""
        return replace(self, resize=resize, crop=crop, padding=None)


PRESETS: dict[str, PreprocessSpec] = {
    # torchvision's ImageNet evaluation: resize 256, centre crop 224, bilinear.
    "torchvision": PreprocessSpec(IMAGENET_MEAN, IMAGENET_STD, "bilinear", 256, 224),
    # timm's defaults (crop_pct 0.875, bicubic); a model's own pretrained_cfg values are given
    # as flags on top (--mean/--std/--interpolation, --resize/--crop for crop_pct).
    "timm": PreprocessSpec(IMAGENET_MEAN, IMAGENET_STD, "bicubic", 8, 7),
    # EfficientNet-Lite as the default store serves it: (x - 127) / 128, crop padding 32.
    "lite": PreprocessSpec(LITE_MEAN, LITE_STD, "bilinear", padding=CROP_PADDING),
}
DEFAULT_PRESET = "torchvision"
