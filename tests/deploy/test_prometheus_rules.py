"""The Prometheus scrape config and rules pass promtool: syntax, and the alert unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
# The shape every alert keeps (see alerts.yml): `signal <op> threshold`, or absent(selector).
# The integration test relies on it to see each alert's signal while the alert is quiet.
ALERT_SHAPE = re.compile(r"^(absent\(\S+\)|\S+ (>|<|==|!=|>=|<=) .+)$")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `make system-deps`"
    return path


def _run(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_config_is_valid(promtool: str) -> None:
    output = _run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in output


def test_rules_are_valid(promtool: str) -> None:
    output = _run(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS" in output


def test_alert_unit_tests_pass(promtool: str) -> None:
    output = _run(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output


def _alerts() -> list[dict[str, str]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_issue_alerts_exist_with_keepable_shape() -> None:
    alerts = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alerts()}
    assert set(alerts) >= {
        "EdgefitBudgetMissRatioHigh",
        "EdgefitLatencyP95AboveBudget",
        "EdgefitLoadShedding",
        "EdgefitNotReady",
        "EdgefitScrapeFailing",
        "EdgefitTargetMissing",
        "EdgefitVariantUnavailable",
    }
    for name, expr in alerts.items():
        assert ALERT_SHAPE.match(expr), f"{name}: {expr!r} is not `signal <op> threshold`"


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names <= firing, f"never tested firing: {names - firing}"
    assert names <= quiet, f"never tested quiet: {names - quiet}"


def test_scrape_config_labels_every_target_with_a_gateway() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "edgefit"]
    assert any(r.get("target_label") == "gateway" for r in job["relabel_configs"])
    interval = int(job["scrape_interval"].removesuffix("s"))
    assert 5 <= interval <= 15
    assert config["rule_files"] == ["alerts.yml"]
