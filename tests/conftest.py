"""Fixtures shared by every tier: the sample images, the default store, real servers."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    path = Path(os.environ.get("EDGEFIT_SAMPLE_DIR", REPO.parent / "shared" / "imagenet-sample"))
    if not path.is_dir():
        pytest.fail(f"the ImageNet sample is missing at {path}: set EDGEFIT_SAMPLE_DIR")
    return path


@pytest.fixture(scope="session")
def store_dir() -> Path:
    path = Path(os.environ.get("EDGEFIT_STORE_DIR", REPO / "model_store" / "artifacts"))
    if not (path / "manifest.json").is_file():
        pytest.fail(f"no store at {path}: run `make setup` first")
    return path


@pytest.fixture(scope="session")
def fast_int8(store_dir: Path) -> str:
    """The full-depth int8 variant with the least compute in the store.

    Tests pick by property, not by name (a store built or trimmed elsewhere may lack a given
    one). Full depth: the pool's int8 subnets below it are too poor for the tests that check an
    answer (the fastest takes the sample's tabby for a hamster).
    """
    variants = json.loads((store_dir / "manifest.json").read_text())["variants"]
    int8 = [v for v in variants if v["precision"] == "int8" and v.get("subnet") is None]
    if not int8:
        pytest.fail(f"the store at {store_dir} has no full-depth int8 variant")
    return str(min(int8, key=lambda v: (v["macs"], v["size_bytes"]))["name"])


@pytest.fixture(scope="session")
def tabby(sample_dir: Path) -> bytes:
    return (sample_dir / "n02123045_tabby.JPEG").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, as an orchestrator would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    store: Path,
    log_dir: Path,
    *,
    wait_ready: bool = True,
    fd_limit: tuple[int, int] | None = None,
    **env: str,
) -> Server:
    """A real ``edgefit serve`` on a free loopback port, with ``EDGEFIT_*`` settings from ``env``;
    ``fd_limit``: its (soft, hard) descriptor limit, as ``ulimit -n`` sets before a start."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    environment = {
        **os.environ,
        "EDGEFIT_CACHE_DIR": str(REPO / ".cache" / "test-latency"),
        "EDGEFIT_PROFILE_RUNS": "10",
        # Every variant of the store, so that tests may pin any of them; which ones this device's
        # frontier keeps is tests/service/test_device_frontier.py's subject.
        "EDGEFIT_FRONTIER": "false",
        **{f"EDGEFIT_{k.upper()}": v for k, v in env.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--store", str(store)],
        cwd=REPO,
        env=environment,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=None if fd_limit is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, fd_limit),
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            status = httpx.get(f"{server.url}/readyz" if wait_ready else f"{server.url}/healthz", timeout=2)
            if status.status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in time:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default store, served for real, with a short body deadline for the 408 test."""
    s = start_server(store_dir, tmp_path_factory.mktemp("server"), body_timeout_seconds="2")
    yield s
    s.stop()
