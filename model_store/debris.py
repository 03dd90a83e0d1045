"""What killed store commands leave in a store, and who may clear it away.

A store command stages its work in a ``.staging-*`` directory inside the store and swaps the
manifest in through a temporary file; it removes both when it ends, but a SIGKILL (an
orchestrator, the OOM killer, a power cut) cannot be cleaned up after by the process it hits.
Store commands hold the store's lock while they run (``store_lock``), so whoever gets the lock
knows that every staging directory it finds belongs to a command that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from model_store.labels import is_label_file_name
from model_store.manifest import MANIFEST_NAME
from model_store.store import StoreError, open_store

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
# How store commands name the model, shared weights, reference and answers files they write:
# ``{name}.{sha256[:12]}.onnx``, ``{name}.{sha256[:12]}.weights``, ``reference.{sha256[:12]}.zip``,
# ``answers.{sha256[:12]}.json``.
STORED_MODEL = re.compile(r".+\.[0-9a-f]{12}\.(onnx|weights|zip|json)")


@contextlib.contextmanager
def store_lock(root: Path, *, wait: bool, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """Holds the store's lock (a ``flock`` on the directory itself, so a read-only store needs
    no lock file) while the block runs; yields whether it got it. ``wait``: block until the
    command holding it ends (calling ``waiting`` first); otherwise give up at once.

    The kernel drops the lock when its holder dies, however it dies.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False  # no store directory yet: nothing to lock, nothing left over
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def remove_debris(root: Path, *, unreferenced: bool) -> list[str]:
    """Remove staging directories and temporary manifests of killed commands; with
    ``unreferenced``, also model and label files the manifest does not name (a command killed
    between moving its files in and swapping the manifest). Returns the names removed.

    Call it only while holding ``store_lock``. ``unreferenced`` only for store commands: a
    server must not delete files of a store that is being copied in, manifest last.
    """
    removed = []
    for path in sorted(root.iterdir()):
        name = path.name
        if name.startswith(STAGING_PREFIX) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif name.startswith(f".{MANIFEST_NAME}.") and name.endswith(".tmp"):
            path.unlink()
        else:
            continue
        removed.append(name)
    if unreferenced:
        try:
            named = open_store(root).files()
        except StoreError:
            return removed  # no readable manifest: nothing tells which files are the store's
        for path in sorted(root.iterdir()):
            # Only names store commands give (content-addressed): a user's own model file kept in
            # the store directory, say the one being added, is not ours to remove.
            ours = STORED_MODEL.fullmatch(path.name) or is_label_file_name(path.name)
            if ours and path.is_file() and path.name not in named:
                path.unlink()
                removed.append(path.name)
    return removed


def clean_for_server(root: Path) -> list[str]:
    """At server start: the debris of killed store commands, when the store is writable here and
    no store command is running on it. Never fails the start: a store it cannot tidy is served
    as it is."""
    if not os.access(root, os.W_OK):
        return []
    try:
        with store_lock(root, wait=False) as held:
            removed = remove_debris(root, unreferenced=False) if held else []
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            log.warning("could not remove the debris of killed store commands in %s: %s", root, exc)
        return []
    if removed:
        log.warning("removed the debris of killed store commands from %s: %s", root, ", ".join(removed))
    return removed
