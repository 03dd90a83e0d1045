"""The serving image installs no torch and no onnx: the server's import graph must not need them."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_the_server_imports_neither_torch_nor_onnx() -> None:
    probe = (
        "import sys\n"
        "import service.cli, service.app\n"
        "service.app.create_app()\n"
        "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
