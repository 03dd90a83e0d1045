"""Start and stop the servers the benchmark measures: edgefit, and the BentoML peer.

``edgefit serve`` runs this checkout's ``service`` (the tree these files are in), whichever
virtualenv's console script starts it: a ``PYTHONPATH`` given to the benchmark comes first, so
``PYTHONPATH=/other/checkout`` measures that checkout's server with these benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEER_DIR = REPO / "bench" / "peer"
PEER_VENV = REPO / "bench" / ".venv-peer"


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds a server process has used (its threads included), or one of its
    threads (``thread``: its id; the process's own id is its main thread, the event loop)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    port: int
    pid: int


@dataclass(frozen=True)
class Setup:
    """What a benchmark reads from its environment: the store, the sample, the server's worker
    and thread counts (default: the server's own), and where results go."""

    store: Path
    sample: Path
    workers: int
    threads: int
    results: Path

    def jpegs(self, stride: int) -> list[bytes]:
        """Every ``stride``-th JPEG of the sorted sample."""
        files = sorted(p for p in self.sample.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        return [p.read_bytes() for p in files[::stride]]

    def held_out(self, stride: int) -> list[tuple[bytes, int]]:
        """Every ``stride``-th image of the sample's held-out half, with its class."""
        from model_store.evaluate import held_out_half, labelled_images

        images = held_out_half(labelled_images(self.sample))[::stride]
        return [(i.path.read_bytes(), i.class_id) for i in images]


def setup() -> Setup:
    """EDGEFIT_STORE_DIR, EDGEFIT_SAMPLE_DIR, BENCH_WORKERS, BENCH_THREADS; makes bench/results."""
    from service.settings import Settings

    defaults = Settings()
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    return Setup(
        store=Path(os.environ.get("EDGEFIT_STORE_DIR", REPO / "model_store" / "artifacts")),
        sample=Path(os.environ.get("EDGEFIT_SAMPLE_DIR", REPO.parent / "shared" / "imagenet-sample")),
        workers=int(os.environ.get("BENCH_WORKERS", defaults.workers)),
        threads=int(os.environ.get("BENCH_THREADS", defaults.threads)),
        results=results,
    )


def machine() -> dict[str, Any]:
    """The CPU, core count and versions every figure is quoted beside (BENCH.md)."""
    import onnxruntime

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def progress(tag: str) -> Callable[[str], None]:
    """A bench script's progress lines on stderr: ``[tag   12s] message``, seconds from now."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{tag} {time.monotonic() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    return say


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float, interval_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(interval_s)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The server is its own process group leader (start_new_session): BentoML's workers live
    # in that group too, so signal the group this process started, and nothing else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Edgefit(Server):
    """An ``edgefit serve`` this process started: it can be killed without warning and started
    again with the same command, port and latency cache, as an orchestrator restarts a container."""

    def __init__(self, port: int, cmd: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(port, 0)
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Starts it; returns the seconds until ``/readyz`` answered 200."""
        started = time.perf_counter()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        self.pid = self.proc.pid
        url = f"http://127.0.0.1:{self.port}/readyz"
        _wait_ready(url, self.proc, self.log, timeout_s=600, interval_s=0.05)
        return time.perf_counter() - started

    def kill(self) -> None:
        """SIGKILL, no drain: what the out-of-memory killer or a lost node does."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextlib.contextmanager
def edgefit(
    store: Path,
    workers: int,
    threads: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> Iterator[Edgefit]:
    """An ``edgefit serve`` on a free loopback port, ready (every variant profiled). Its cache
    (latency tables, this device's frontier) is its own unless ``cache_dir`` is given: servers
    compared in pairs share one, so that they serve what the first of them chose, not what each
    start's profiling noise chose."""
    port = free_port()
    log = log_dir / "edgefit.log"
    with contextlib.ExitStack() as stack:
        cache = cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefit-bench-cache-"))
        env = {
            **os.environ,
            "EDGEFIT_CACHE_DIR": str(cache),
            "EDGEFIT_WORKERS": str(workers),
            "EDGEFIT_THREADS": str(threads),
            "EDGEFIT_LOG_LEVEL": "WARNING",  # a log line per request would cost the server CPU
            # Ahead of the virtualenv's editable install, which may point at another checkout.
            "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
            **(extra_env or {}),
        }
        cmd = [
            str(Path(sys.executable).parent / "edgefit"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--store",
            str(store),
        ]
        server = Edgefit(port, cmd, env, log)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def peer(store: Path, variant: str, threads: int, log_dir: Path) -> Iterator[int]:
    """BentoML serving ``variant`` with its default settings (bench/peer/); yields its port."""
    port = free_port()
    log = log_dir / f"peer-{variant}.log"
    with tempfile.TemporaryDirectory(prefix="bentoml-home-") as home:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),  # the peer imports edgefit's preprocessing, nothing else
            "BENTOML_HOME": home,
            "BENTOML_DO_NOT_TRACK": "True",
            "PEER_STORE_DIR": str(store.resolve()),
            "PEER_VARIANT": variant,
            "PEER_THREADS": str(threads),
        }
        cmd = [
            str(PEER_VENV / "bin" / "bentoml"),
            "serve",
            "service:Classifier",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=PEER_DIR, env=env, stdout=out, stderr=out, start_new_session=True
            )
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=120)
            yield port
        finally:
            _stop(proc)


def peer_version() -> str:
    out = subprocess.run(
        [str(PEER_VENV / "bin" / "python"), "-c", "import bentoml; print(bentoml.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()
