"""The walls of the layout, read from the source: what may import what."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# service/api modules that are routes (the rest is shared plumbing: body, deps, errors, middleware).
ROUTES = {"admin", "classify", "health", "models", "status", "v2"}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, by its dotted name (``from a import b`` counts ``a.b`` too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_routes_do_not_import_routes() -> None:
    for path in sorted((REPO / "service" / "api").glob("*.py")):
        others = {f"service.api.{route}" for route in ROUTES} - {f"service.api.{path.stem}"}
        assert not imported(path) & others, f"{path.name} imports a route module"


def test_the_store_library_does_not_import_the_build_tooling() -> None:
    library = [p for p in (REPO / "model_store").rglob("*.py") if "build" not in p.relative_to(REPO).parts]
    assert library
    for path in library:
        assert not any(name.startswith("model_store.build") for name in imported(path)), path
