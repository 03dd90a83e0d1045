"""Class labels: ImageNet-1k shipped with the repo (``model_store/data``), or a store's label file.

A variant's manifest ``labels`` is ``imagenet-1k`` or the name of a label file in the store:
``labels-<first 16 hex digits of its sha256>.txt``, one label per line, the line number (from 0)
being the class index. The name carries the hash, so a changed file is refused like a changed
model.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from importlib import resources

IMAGENET = "imagenet-1k"
_LABEL_FILE = re.compile(r"^labels-([0-9a-f]{16})\.txt$")


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """ImageNet-1k as ``(wnid, label)`` pairs; the position is the class index."""
    data = json.loads(resources.files("model_store").joinpath("data/imagenet_labels.json").read_text())
    return tuple((row["wnid"], row["label"]) for row in data["classes"])


def parse_label_file(data: bytes) -> tuple[str, ...]:
    """The labels of a label file's bytes. Raises ``ValueError`` saying what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    names = tuple(line.strip() for line in text.splitlines())
    # A trailing newline is usual; a blank line inside would shift every later class index.
    while names and not names[-1]:
        names = names[:-1]
    if not names:
        raise ValueError("holds no labels")
    if "" in names:
        raise ValueError(f"line {names.index('') + 1} is blank; every class index needs a label")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"repeats labels: {', '.join(duplicates[:3])}")
    return names


def label_file_name(data: bytes) -> str:
    """The name a label file with these bytes gets in a store."""
    return f"labels-{hashlib.sha256(data).hexdigest()[:16]}.txt"


def is_label_file_name(reference: str) -> bool:
    return _LABEL_FILE.fullmatch(reference) is not None
