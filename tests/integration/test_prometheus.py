"""A real Prometheus scrapes a real `edgefit serve`; every dashboard query and alert is evaluated.

The scrape config is deploy/prometheus/prometheus.yml with only the target and the intervals
changed, and the rules are deploy/prometheus/alerts.yml as shipped, so a rename on either side
(metric, label, recording rule) fails here rather than on an operator's empty dashboard.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, start_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "edgefit.json"
# 1 ms can never be met (decoding alone takes longer), so misses are certain; 1 s is always met.
BUDGETS = ("1ms", "5ms", "20ms", "50ms", "1000ms", None)
IMAGES_PER_BUDGET = 6
SCRAPE_SECONDS = 1
# The rule's form every alert keeps (see alerts.yml and tests/deploy/test_prometheus_rules.py).
COMPARISON = re.compile(r"^(?P<signal>\S+) (?P<op>>=|<=|==|!=|>|<) (?P<rest>.+)$")
ABSENT = re.compile(r"^absent\((?P<selector>\S+)\)$")


def _sample_images(sample_dir: Path) -> list[Path]:
    images = sorted(sample_dir.glob("*.JPEG"))
    assert len(images) >= IMAGES_PER_BUDGET, f"no sample JPEGs in {sample_dir}"
    # Spread over the sorted (class-ordered) list: different sizes and contents.
    step = len(images) // IMAGES_PER_BUDGET
    return images[::step][:IMAGES_PER_BUDGET]


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: process exited\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} not 200 within {timeout:.0f} s\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def variants(store_dir: Path) -> tuple[str, str]:
    """The store's lowest-resolution variant and the highest-resolution one of its family: quick
    to load and profile, and far enough apart in speed that the budgets make the selector choose.
    """
    manifest = json.loads((store_dir / "manifest.json").read_text())["variants"]
    fastest = min(manifest, key=lambda v: (v["resolution"], v["size_bytes"]))
    family = [v for v in manifest if v["family"] == fastest["family"] and v is not fastest]
    larger = max(family, key=lambda v: (v["resolution"], -v["size_bytes"]))
    return fastest["name"], larger["name"]


@pytest.fixture(scope="module")
def server(
    store_dir: Path, variants: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `edgefit serve` of those two variants on a free loopback port; yields host:port."""
    tmp = tmp_path_factory.mktemp("edgefit")
    served = start_server(
        store_dir,
        tmp,
        variants=",".join(variants),
        profile_runs="5",
        cache_dir=str(tmp / "cache"),
    )
    try:
        yield served.url.removeprefix("http://")
    finally:
        served.stop()


@dataclass
class Prometheus:
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        response = self.client.get(f"{self.url}/api/v1/query", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str, **params: str) -> Any:
        response = self.client.get(f"{self.url}{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the server every second, with the shipped rules loaded."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run `make system-deps`"
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    interval = f"{SCRAPE_SECONDS}s"
    config["global"] |= {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "edgefit"]
    # No `gateway` label on the target: the shipped relabeling must supply one (the host).
    job |= {"scrape_interval": interval, "scrape_timeout": interval}
    job["static_configs"] = [{"targets": [server]}]
    config_file = tmp / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))

    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/ready", process, log, 60)
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        _stop(process)


@dataclass
class Traffic:
    """What the test sent and what came back, by the client's own count."""

    start: float
    end: float
    budgeted: int
    met: int
    statuses: dict[int, int]


def _wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(SCRAPE_SECONDS / 4)


@pytest.fixture(scope="module")
def traffic(server: str, prometheus: Prometheus, variants: tuple[str, str], sample_dir: Path) -> Traffic:
    start = time.time()
    instance = f'instance="{server}"'
    # Every counter's first sample must be the pre-initialised 0, before any traffic, so that
    # increase() over the whole test counts every request (no extrapolation from a late start).
    _wait_until(
        lambda: prometheus.query(f"edgefit_budget_total{{{instance}}}"),
        "the first scrape of the server",
    )
    assert all(float(s["value"][1]) == 0 for s in prometheus.query(f"edgefit_budget_total{{{instance}}}")), (
        "edgefit_budget_total was not zero before any traffic"
    )

    statuses: dict[int, int] = {}
    budgeted = met = 0
    with httpx.Client(base_url=f"http://{server}", timeout=30) as client:
        for budget in BUDGETS:
            for image in _sample_images(sample_dir):
                params = {"budget": budget} if budget else {}
                response = client.post(
                    "/classify",
                    params=params,
                    content=image.read_bytes(),
                    headers={"Content-Type": "image/jpeg"},
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["model"]["name"] in variants
                if budget is None:
                    assert body["budget_met"] is None
                else:
                    budgeted += 1
                    met += body["budget_met"] is True
        # Malformed requests: answered 4xx and counted as client errors, never as a variant.
        jpeg = _sample_images(sample_dir)[0].read_bytes()
        malformed = [
            ({"budget": "20ms"}, b"", "image/jpeg"),
            ({"budget": "20ms"}, b"this is not an image", "image/jpeg"),
            ({"budget": "20ms"}, jpeg[: len(jpeg) // 3], "image/jpeg"),
            ({"budget": "fast"}, jpeg, "image/jpeg"),
            ({"budget": "0ms"}, jpeg, "image/jpeg"),
            ({"model": "no-such-variant"}, jpeg, "image/jpeg"),
            ({}, b"{}", "application/json"),
        ]
        for params, content, content_type in malformed:
            response = client.post(
                "/classify", params=params, content=content, headers={"Content-Type": content_type}
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert 400 <= response.status_code < 500, (params, response.status_code)

    assert 0 < met < budgeted, f"the budgets should give both hits and misses: {met}/{budgeted}"
    # Wait until Prometheus has scraped every answer, then for one more scrape so that each
    # window below ends after the last change.
    _wait_until(
        lambda: (
            sum(float(s["value"][1]) for s in prometheus.query(f"edgefit_budget_total{{{instance}}}"))
            == budgeted
        ),
        "Prometheus to see every budgeted answer",
    )
    time.sleep(2 * SCRAPE_SECONDS)
    return Traffic(start=start, end=time.time(), budgeted=budgeted, met=met, statuses=statuses)


def _dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def _promql_string(value: str) -> str:
    # What Grafana puts in a `=~"$var"` matcher for one selected value: the regex-escaped
    # value, written as a PromQL string literal (backslashes doubled).
    return re.escape(value).replace("\\", "\\\\")


def _substitute(expr: str, gateway: str, instance: str, window: str) -> str:
    """The query Grafana sends for this one gateway and instance ("" for "All")."""
    for name, value in {
        # "All" is the variables' allValue, `.*`, put in unescaped.
        "gateway": _promql_string(gateway) if gateway else ".*",
        "instance": _promql_string(instance) if instance else ".*",
        # One window covering the whole test: every rate and increase sees all the traffic.
        "__rate_interval": window,
        "__interval": window,
        "__range": window,
    }.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unknown template variable in {expr}"
    return expr


def _finite(samples: list[dict[str, Any]]) -> list[float]:
    values = [float(s["value"][1]) for s in samples]
    return [v for v in values if math.isfinite(v)]


def test_prometheus_scrapes_the_server_with_a_gateway_label(
    server: str, prometheus: Prometheus, traffic: Traffic, variants: tuple[str, str]
) -> None:
    (target,) = prometheus.get("/api/v1/targets")["activeTargets"]
    assert target["health"] == "up", target
    assert target["labels"]["instance"] == server
    assert target["labels"]["gateway"] == "127.0.0.1"  # from the shipped relabeling
    info = prometheus.query(f'edgefit_variant_info{{instance="{server}"}}')
    assert {s["metric"]["variant"] for s in info} == set(variants)
    # The dashboard's variables list this gateway and instance.
    gateways = prometheus.get("/api/v1/label/gateway/values", **{"match[]": "edgefit_variant_info"})
    assert "127.0.0.1" in gateways
    instances = prometheus.get(
        "/api/v1/label/instance/values", **{"match[]": 'edgefit_variant_info{gateway="127.0.0.1"}'}
    )
    assert server in instances


@pytest.mark.parametrize("selected", ["this gateway", "all"])
def test_every_dashboard_query_returns_data(
    server: str, prometheus: Prometheus, traffic: Traffic, selected: str
) -> None:
    window = f"{math.ceil(traffic.end - traffic.start) + 30}s"
    gateway, instance = ("127.0.0.1", server) if selected == "this gateway" else ("", "")
    targets = _dashboard_targets()
    assert len(targets) >= 15
    empty = []
    for title, expr in targets:
        query = _substitute(expr, gateway, instance, window)
        if not _finite(prometheus.query(query, at=traffic.end)):
            empty.append(f"{title}: {query}")
    assert not empty, "queries without a finite value:\n" + "\n".join(empty)


def test_dashboard_budget_met_ratio_equals_the_clients_count(
    server: str, prometheus: Prometheus, traffic: Traffic
) -> None:
    window = f"{math.ceil(traffic.end - traffic.start) + 30}s"
    (expr,) = [e for title, e in _dashboard_targets() if title == "Budget met ratio"]
    (sample,) = prometheus.query(_substitute(expr, "127.0.0.1", server, window), at=traffic.end)
    shown = float(sample["value"][1])
    assert shown == pytest.approx(traffic.met / traffic.budgeted, abs=1e-9), (
        f"dashboard {shown} vs client {traffic.met}/{traffic.budgeted}"
    )


def _rules(prometheus: Prometheus) -> list[dict[str, Any]]:
    groups = prometheus.get("/api/v1/rules")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _signal(expr: str) -> str:
    """An alert's expression with its threshold turned into a 0/1 result (`<op> bool`), so it
    returns data whether or not the alert fires; absent(x) becomes x."""
    expr = " ".join(expr.split())
    if match := ABSENT.match(expr):
        return match["selector"]
    match = COMPARISON.match(expr)
    assert match, f"alert expression not of the form `signal <op> threshold`: {expr}"
    return f"{match['signal']} {match['op']} bool {match['rest']}"


def test_every_rule_evaluates_and_every_alert_expression_returns_data(
    prometheus: Prometheus, traffic: Traffic
) -> None:
    shipped = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    names = {r.get("alert") or r["record"] for g in shipped for r in g["rules"]}
    # Rules are evaluated every second; Prometheus reports the zero time for one never evaluated.
    _wait_until(
        lambda: not any(r["lastEvaluation"].startswith("0001-") for r in _rules(prometheus)),
        "every rule to be evaluated",
    )
    rules = _rules(prometheus)
    assert {r["name"] for r in rules} == names
    failing = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not failing, failing
    empty = []
    for rule in rules:
        expr = rule["query"] if rule["type"] == "recording" else _signal(rule["query"])
        if not _finite(prometheus.query(expr)):
            empty.append(f"{rule['name']}: {expr}")
    assert not empty, "rules without a finite value:\n" + "\n".join(empty)


def test_alert_states_match_the_traffic(server: str, prometheus: Prometheus, traffic: Traffic) -> None:
    # The 1 ms budgets make well over 1% of answers late: that alert is pending (its `for` has
    # not run out). The server is up, ready and never shed: those alerts are quiet.
    _wait_until(
        lambda: any(
            a["labels"]["alertname"] == "EdgefitBudgetMissRatioHigh"
            for a in prometheus.get("/api/v1/alerts")["alerts"]
        ),
        "EdgefitBudgetMissRatioHigh to become pending",
    )
    alerts = {a["labels"]["alertname"]: a for a in prometheus.get("/api/v1/alerts")["alerts"]}
    assert alerts["EdgefitBudgetMissRatioHigh"]["state"] == "pending"
    assert alerts["EdgefitBudgetMissRatioHigh"]["labels"]["instance"] == server
    quiet = {"EdgefitNotReady", "EdgefitLoadShedding", "EdgefitScrapeFailing"}
    quiet |= {"EdgefitTargetMissing", "EdgefitVariantUnavailable"}
    assert not quiet & set(alerts), alerts
    (unready,) = prometheus.query(f'instance:edgefit_not_ready:bool{{instance="{server}"}}')
    assert float(unready["value"][1]) == 0
    missed = traffic.budgeted - traffic.met
    (ratio,) = prometheus.query(f'instance:edgefit_budget_missed:ratio_rate5m{{instance="{server}"}}')
    assert float(ratio["value"][1]) == pytest.approx(missed / traffic.budgeted, abs=1e-9)
