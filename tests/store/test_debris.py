"""`kill -9` of `edgefit store add` at moments spread over its run: the store stays whole, and
the next store command (or a server start) removes what the killed one left."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from model_store.debris import STAGING_PREFIX, clean_for_server, store_lock
from model_store.store import open_store
from tests.store.conftest import add_tiny, export_tiny

KILLS = 8


def edgefit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, check=False
    )


def staging(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith(STAGING_PREFIX))


def whole(store: Path) -> set[str]:
    """The variants of a store that opens and whose every file matches its sha256."""
    opened = open_store(store)
    for variant in opened.manifest.variants:
        opened.verify(variant)
    return {v.name for v in opened.manifest.variants}


@pytest.fixture
def images(sample_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Calibration and evaluation folders: enough images that the add runs for seconds."""
    jpegs = sorted(sample_dir.glob("*.JPEG"))
    folders = []
    for name, chosen in (("calibration", jpegs[200:216]), ("evaluate", jpegs[:200])):
        folder = tmp_path / name
        folder.mkdir()
        for image in chosen:
            (folder / image.name).symlink_to(image.resolve())
        folders.append(folder)
    return folders[0], folders[1]


def test_killed_adds_leave_the_store_whole_and_the_next_command_tidies_it(
    tmp_path: Path, images: tuple[Path, Path]
) -> None:
    source = export_tiny(tmp_path / "dyn.onnx", dynamic=True)
    calibration, evaluate = images
    store, pristine = tmp_path / "store", tmp_path / "pristine"

    def add(name: str, store: Path) -> list[str]:
        return [sys.executable, "-m", "service.cli", "store", "add", str(source), "--store", str(store),
                "--name", name, "--family", "tinynet", "--resolutions", "32,48,64,96",
                "--precisions", "fp32,int8", "--calibration", str(calibration), "--evaluate", str(evaluate),
                "--min-agreement", "0.01", "--preprocess", "lite"]  # fmt: skip

    base = edgefit("store", "add", str(source), "--store", str(store), "--name", "base",
                   "--family", "tinynet", "--resolution", "32", "--preprocess", "lite")  # fmt: skip
    assert base.returncode == 0, base.stderr
    before = whole(store)
    shutil.copytree(store, pristine)

    # A run to time: when its staging directory appears, and when it ends.
    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    started = time.monotonic()
    process = subprocess.Popen(add("t", reference), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staged_at = None
    while process.poll() is None:
        if staged_at is None and staging(reference):
            staged_at = time.monotonic() - started
        time.sleep(0.005)
    total = time.monotonic() - started
    assert process.returncode == 0 and staged_at is not None, process.stderr
    after = whole(reference)
    assert after > before

    # One kill before the staging directory exists; the others spread over the staging phase,
    # timed from the moment this run's staging directory appears (a start's imports take
    # longer on a busy machine, so a moment predicted from the reference run's start can miss).
    staged = total - staged_at
    left_debris = 0
    for i in range(KILLS):
        process = subprocess.Popen(add("t", store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i == 0:
            moment = staged_at / 2
        else:
            while process.poll() is None and not staging(store):
                time.sleep(0.005)
            moment = staged * (i - 0.5) / KILLS
        time.sleep(moment)
        process.kill()
        process.wait()
        assert whole(store) in (before, after), f"kill {i} at {moment:.2f} s"
        left_debris += bool(staging(store))
        if i % 2:
            # A server start tidies the staging directories (never files: a store may be copied in).
            clean_for_server(store)
            assert not staging(store) and not list(store.glob(".manifest.json.*"))
        else:
            listed = edgefit("store", "list", "--store", str(store))
            assert listed.returncode == 0, listed.stderr
            assert not staging(store) and not list(store.glob(".manifest.json.*"))
            named = {v.file for v in open_store(store).manifest.variants} | {"manifest.json"}
            assert {p.name for p in store.iterdir()} == named, f"kill {i} at {moment:.2f} s"
        if whole(store) == after:  # killed after its manifest swap: the add is done; start again
            shutil.rmtree(store)
            shutil.copytree(pristine, store)
    assert left_debris >= KILLS // 2, "the kills did not hit the staging phase"

    # And one more add runs to its end on the tidied store.
    done = subprocess.run(add("t", store), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert whole(store) == after and not staging(store)


def test_a_running_command_is_waited_for_not_tidied_away(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{STAGING_PREFIX}live").mkdir()
    with store_lock(store, wait=False) as held:
        assert held
        # A reading command does not wait and leaves the running command's work alone...
        listed = edgefit("store", "list", "--store", str(store))
        assert (store / f"{STAGING_PREFIX}live").is_dir() and "manifest.json is missing" in listed.stderr
        assert clean_for_server(store) == []
        # ...and a writing one waits for it.
        waiting = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "store",
                "evaluate",
                "--store",
                str(store),
                "--images",
                str(tmp_path),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiting.stderr is not None
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(waiting.stderr.readline).result(timeout=60)
        assert "waiting for another store command" in first
        time.sleep(0.5)
        assert waiting.poll() is None and (store / f"{STAGING_PREFIX}live").is_dir()
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1 and "manifest.json is missing" in err
    assert not (store / f"{STAGING_PREFIX}live").exists()


def test_only_files_named_as_store_commands_name_them_are_tidied(tmp_path: Path, tiny_onnx: Path) -> None:
    store = tmp_path / "store"
    add_tiny(store, tiny_onnx)
    (store / "mine.onnx").write_bytes(tiny_onnx.read_bytes())  # the user's, e.g. about to be added
    (store / "orphan.0123456789ab.onnx").write_bytes(b"moved in, then killed before the manifest")
    listed = edgefit("store", "list", "--store", str(store))
    assert listed.returncode == 0 and "orphan.0123456789ab.onnx" in listed.stderr
    assert (store / "mine.onnx").is_file() and not (store / "orphan.0123456789ab.onnx").exists()
    assert whole(store) == {"tiny-32-fp32"}
