"""Class labels shipped with the repo (``model_store/data``)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """ImageNet-1k as ``(wnid, label)`` pairs; the position is the class index."""
    data = json.loads(resources.files("model_store").joinpath("data/imagenet_labels.json").read_text())
    return tuple((row["wnid"], row["label"]) for row in data["classes"])


def labels(reference: str) -> tuple[str, ...]:
    """The label of each class index for a manifest ``labels`` reference."""
    if reference != "imagenet-1k":
        raise KeyError(f"unknown label set {reference!r}")
    return tuple(label for _, label in imagenet_classes())
