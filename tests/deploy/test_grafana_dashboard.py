"""The Grafana dashboard is generated from code, committed fresh, and covers the issue's panels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana"

REQUIRED_PANELS = {
    "Request rate by variant and outcome",
    "Request latency p50 / p95 / p99 against the budget",
    "Budget met ratio",
    "Budget slack distribution",
    "Variant mix",
    "Predicted vs observed latency per variant",
    "Queue depth and in-flight requests",
    "Queue wait p95 by budget tier",
    "Downgrades caused by other traffic",
    "Shed and error rates",
    "Process CPU",
    "Process memory",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgefit_dashboard", GRAFANA_DIR / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA_DIR / "dashboards" / "edgefit.json").read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_committed_json_is_a_fresh_generation() -> None:
    generator = _generator()
    committed = (GRAFANA_DIR / "dashboards" / "edgefit.json").read_text()
    assert committed == generator.render(), "run .venv/bin/python deploy/grafana/dashboard.py"
    assert generator.main(["--check"]) == 0


def test_gateway_and_instance_variables() -> None:
    variables = {v["name"]: v for v in _committed()["templating"]["list"]}
    assert {"gateway", "instance"} <= set(variables)
    assert "gateway" in variables["gateway"]["query"]
    assert "$gateway" in variables["instance"]["query"]


def test_required_panels_exist_with_unique_ids() -> None:
    panels = _panels(_committed())
    assert {p["title"] for p in panels} >= REQUIRED_PANELS
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    (slack,) = [p for p in panels if p["title"] == "Budget slack distribution"]
    assert slack["type"] == "heatmap"
    assert all(t["format"] == "heatmap" for t in slack["targets"])


def test_every_query_is_scoped_by_the_variables() -> None:
    budget_line = _generator().COMMON_BUDGET
    targets = [t for p in _panels(_committed()) for t in p.get("targets", [])]
    assert len(targets) >= 15
    for target in targets:
        if target["expr"] == budget_line:
            continue  # a fleet-wide constant, the same for every gateway
        assert 'gateway=~"$gateway"' in target["expr"], target["expr"]
        assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    variables = {v["name"]: v for v in _committed()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    providers = yaml.safe_load((provisioning / "dashboards" / "edgefit.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
