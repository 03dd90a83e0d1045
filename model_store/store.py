"""Open, verify and write a model store: a directory of ONNX files plus ``manifest.json``.

Writes are atomic (temporary file in the same directory, fsync, rename), so a reader sees either
the old manifest or the new one, and a failed build or add leaves the previous store intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from model_store.labels import (
    IMAGENET,
    imagenet_classes,
    is_label_file_name,
    label_file_name,
    parse_label_file,
)
from model_store.manifest import MANIFEST_NAME, READABLE_VERSIONS, SCHEMA_VERSION, Manifest, Variant

_CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed; the message is one line a user can act on."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; a store is read by other users (the container's).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Store:
    root: Path
    manifest: Manifest

    @property
    def digest(self) -> str:
        """A hash of the manifest (which holds every file's sha256): changes when any model does."""
        return hashlib.sha256(self.manifest.model_dump_json().encode()).hexdigest()

    def path_of(self, variant: Variant, file: str | None = None) -> Path:
        """The variant's file (or ``file``, one it uses), refusing any path that would leave the
        store directory."""
        return self._path(variant.file if file is None else file, f"variant {variant.name}")

    def _path(self, file: str, what: str) -> Path:
        root = self.root.resolve()
        path = (root / file).resolve()
        if path.parent != root:
            raise StoreError(f"{what}: file {file!r} is outside the store")
        return path

    def verify(self, variant: Variant) -> bytes:
        """The variant's file contents, read once and checked against its sha256.

        What is returned is what was hashed: load these bytes, never the path again (the file
        could change between a check and a second open). Raises ``StoreError``.
        """
        return self.verified(f"variant {variant.name}", variant.file, variant.sha256)

    def verify_weights(self, variant: Variant) -> tuple[str, bytes] | None:
        """The shared weights file ``variant`` uses, ``(name, contents)``, verified as ``verify``
        does; None when its own file holds its weights."""
        if variant.weights is None:
            return None
        return variant.weights.file, self.verified(
            f"variant {variant.name}", variant.weights.file, variant.weights.sha256
        )

    def verified(self, what: str, file: str, sha256: str) -> bytes:
        """``file`` of the store, read once and checked against ``sha256`` (``what`` names what it
        is in errors). Raises ``StoreError``."""
        path = self._path(file, what)
        if not path.is_file():
            raise StoreError(f"{what}: file {file} is missing")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{what}: cannot read {file}: {exc.strerror}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise StoreError(
                f"{what}: {file} has sha256 {actual[:12]}…, the manifest says {sha256[:12]}…; "
                "refusing to use it"
            )
        return data

    def files(self) -> set[str]:
        """Every file the manifest names: models, shared weights files, label files, the reference
        set, the recorded answers."""
        named = {f.file for f in (self.manifest.reference, self.manifest.answers) if f is not None}
        for v in self.manifest.variants:
            named |= {v.file} | ({v.weights.file} if v.weights else set())
            named |= {v.labels} if v.labels != IMAGENET else set()
        return named

    def labels(self, variant: Variant) -> tuple[str, ...]:
        """The label of each class index of ``variant``, its label file checked against its name."""
        if variant.labels == IMAGENET:
            return tuple(label for _, label in imagenet_classes())
        if not is_label_file_name(variant.labels):
            raise StoreError(f"variant {variant.name}: unknown label set {variant.labels!r}")
        path = self.root / variant.labels
        if not path.is_file():
            raise StoreError(f"variant {variant.name}: label file {variant.labels} is missing")
        data = path.read_bytes()
        if label_file_name(data) != variant.labels:
            raise StoreError(f"variant {variant.name}: {variant.labels} does not match its hash")
        try:
            return parse_label_file(data)
        except ValueError as exc:
            raise StoreError(f"variant {variant.name}: {variant.labels} {exc}") from None

    def write(self, manifest: Manifest) -> Store:
        """Atomically replace the manifest; return the store as it now is."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest.model_dump(mode="json"), indent=2).encode() + b"\n"
        _atomic_write_bytes(self.root / MANIFEST_NAME, data)
        return Store(self.root, manifest)


def open_store(root: Path | str, *, missing_ok: bool = False) -> Store:
    """Read and validate ``root/manifest.json``.

    With ``missing_ok``, a directory without a manifest opens as an empty store.
    Raises ``StoreError``.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        if missing_ok:
            return Store(root, Manifest())
        raise StoreError(f"no store at {root}: {MANIFEST_NAME} is missing (run `edgefit store build`)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        version = json.loads(data).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    if isinstance(version, int) and version not in READABLE_VERSIONS:
        # Schema 1 models took float NCHW tensors: their files cannot be served as they are.
        raise StoreError(
            f"{path} has schema_version {version}; this edgefit reads version {SCHEMA_VERSION}: "
            "rebuild the store (`make clean-store setup`, or `edgefit store build`)"
        )
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StoreError(f"{path} is not a valid manifest: {where}: {first['msg']}") from exc
    return Store(root, manifest)
