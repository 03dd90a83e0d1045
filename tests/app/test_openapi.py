"""schemathesis against ``/openapi.json``: every operation, positive and negative inputs, through
a real uvicorn on loopback over a tiny store; not one server error.

The schemathesis CLI (its pytest plugin does not run under pytest 9) with a time budget
(``--max-time``), so the whole test stays well under two minutes. ``/v2`` included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.app.conftest import default_models, write_store
from tests.conftest import start_server

SCHEMATHESIS = Path(sys.executable).parent / "st"
# Every operation is tried first either way; the rest of the budget fuzzes on (`make unit` spends
# less of it than `make test`).
MAX_SECONDS = int(os.environ.get("EDGEFIT_FUZZ_SECONDS", "60"))


def test_no_server_errors_from_any_operation(tmp_path: Path) -> None:
    write_store(tmp_path / "store", default_models())
    server = start_server(tmp_path / "store", tmp_path, profile_runs="3", body_timeout_seconds="2")
    try:
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{server.url}/openapi.json",
                "--checks=not_a_server_error",
                "--mode=all",
                "--max-examples=100",
                f"--max-time={MAX_SECONDS}",
                "--request-timeout=30",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS + 60,
            cwd=tmp_path,  # where it keeps its own files
            check=False,
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:] + server.log.read_text()[-4000:]
    assert "/classify" in run.stdout
