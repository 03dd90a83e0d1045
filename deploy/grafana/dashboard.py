"""Generates the edgefit Grafana dashboard (dashboards as code, with grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/dashboard.py          # rewrites dashboards/edgefit.json
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if the committed JSON is stale

The JSON under dashboards/ is a build product committed for Grafana's file provisioning: edit this
file, never the JSON. Every query filters on the `gateway` and `instance` variables; the
integration test (tests/integration/test_prometheus.py) runs every query below against a real
Prometheus scraping a real server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

OUTPUT = Path(__file__).parent / "dashboards" / "edgefit.json"
UID = "edgefit-gateways"

# Panels read the datasource from a variable, so the dashboard also works when imported into a
# Grafana whose Prometheus datasource has another uid than the provisioned one.
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# The series selector every panel uses; `=~` because both variables allow "All".
SEL = 'gateway=~"$gateway", instance=~"$instance"'
# The budget line comes from the recording rule the p95 alert uses (deploy/prometheus/alerts.yml),
# so the dashboard and the alert can never disagree on what "the budget" is.
COMMON_BUDGET = "edgefit:common_budget:seconds"


# A row's title and its panels. Rows are added expanded, their panels following them at the top
# level, which is how Grafana itself saves an expanded row.
_Row = tuple[str, list[Builder[dashboard_model.Panel]]]


class _Ids:
    """Stable panel ids in declaration order (tests and links address panels by id)."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range().datasource(DATASOURCE)


def _timeseries(
    ids: _Ids, title: str, description: str, unit: str, queries: list[prometheus.Dataquery]
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _variables() -> list[dashboard.QueryVariable | dashboard.DatasourceVariable]:
    datasource = (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dashboard_model.VariableOption(text="Prometheus", value="prometheus"))
    )
    gateway = (
        dashboard.QueryVariable("gateway")
        .label("Gateway")
        .datasource(DATASOURCE)
        .query("label_values(edgefit_variant_info, gateway)")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    instance = (
        dashboard.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query('label_values(edgefit_variant_info{gateway=~"$gateway"}, instance)')
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [datasource, gateway, instance]


def _traffic_row(ids: _Ids) -> _Row:
    return (
        "Traffic",
        [
            _timeseries(
                ids,
                "Request rate by variant and outcome",
                "Answers per second, split by the variant that answered and the outcome "
                "(ok, client_error, shed, error).",
                "reqps",
                [
                    _query(
                        f"sum by (variant, outcome) "
                        f"(rate(edgefit_requests_total{{{SEL}}}[$__rate_interval]))",
                        "{{variant}} {{outcome}}",
                    )
                ],
            ),
            _timeseries(
                ids,
                "Shed and error rates",
                "Requests refused with 503 because the queue was past its bound (shed), failed "
                "on the server (error) or rejected as malformed (client_error).",
                "reqps",
                [
                    _query(
                        f"sum by (outcome) (rate(edgefit_requests_total"
                        f'{{{SEL}, outcome=~"shed|error|client_error"}}[$__rate_interval]))',
                        "{{outcome}}",
                    )
                ],
            ),
        ],
    )


def _budget_row(ids: _Ids) -> _Row:
    def quantile(q: str, ref: str) -> prometheus.Dataquery:
        return _query(
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(edgefit_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
            f"p{q[2:]}",
            ref,
        )

    latency = _timeseries(
        ids,
        "Request latency p50 / p95 / p99 against the budget",
        "Server-side request latency (first byte read to last byte written) against the most "
        f"common budget ({COMMON_BUDGET}, a recording rule in deploy/prometheus/alerts.yml).",
        "s",
        [
            quantile("0.50", "A"),
            quantile("0.95", "B"),
            quantile("0.99", "C"),
            _query(COMMON_BUDGET, "budget (most common)", "D"),
        ],
    ).override_by_name(
        "budget (most common)",
        [
            dashboard_model.DynamicConfigValue(
                id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
            ),
            dashboard_model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
        ],
    )

    met_ratio = (
        stat.Panel()
        .id(ids())
        .title("Budget met ratio")
        .description(
            "Share of budgeted answers that met their budget (by the server's own clock) over "
            "the whole selected time range."
        )
        .datasource(DATASOURCE)
        .unit("percentunit")
        .decimals(2)
        .min(0)
        .max(1)
        .height(8)
        .span(6)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(dashboard_model.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    dashboard_model.Threshold(value=None, color="red"),
                    dashboard_model.Threshold(value=0.95, color="orange"),
                    dashboard_model.Threshold(value=0.99, color="green"),
                ]
            )
        )
        .with_target(
            _query(
                f'sum(increase(edgefit_budget_total{{{SEL}, result="met"}}[$__range])) / '
                f"sum(increase(edgefit_budget_total{{{SEL}}}[$__range]))",
                "met",
            ).instant()
        )
    )

    met_by_variant = _timeseries(
        ids,
        "Budget met ratio by variant",
        "Share of budgeted answers that met their budget, per answering variant.",
        "percentunit",
        [
            _query(
                f'sum by (variant) (rate(edgefit_budget_total{{{SEL}, result="met"}}'
                f"[$__rate_interval])) / sum by (variant) "
                f"(rate(edgefit_budget_total{{{SEL}}}[$__rate_interval]))",
                "{{variant}}",
            )
        ],
    ).span(6)

    slack = (
        heatmap.Panel()
        .id(ids())
        .title("Budget slack distribution")
        .description("Budget minus server-side total time per budgeted answer; below zero means late.")
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s").axis_placement(common.AxisPlacement.LEFT))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Spectral")
            .steps(64)
        )
        .cell_values(heatmap.CellValues().unit("short"))
        .with_target(
            _query(
                f"sum by (le) (increase(edgefit_budget_slack_seconds_bucket{{{SEL}}}[$__rate_interval]))",
                "{{le}}",
            ).format(prometheus_model.PromQueryFormat.HEATMAP)
        )
    )

    return "Latency budget", [latency, met_ratio, met_by_variant, slack]


def _variants_row(ids: _Ids) -> _Row:
    mix = _timeseries(
        ids,
        "Variant mix",
        "Share of requests routed to each variant (the selector's choices over time).",
        "percentunit",
        [
            _query(
                f"sum by (variant) "
                f"(rate(edgefit_variant_selected_total{{{SEL}}}[$__rate_interval])) / "
                f"scalar(sum(rate(edgefit_variant_selected_total{{{SEL}}}[$__rate_interval])))",
                "{{variant}}",
            )
        ],
    ).stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))

    reasons = _timeseries(
        ids,
        "Selection reasons",
        "Why variants were chosen: best fit for the budget, pinned by `model=`, fallback to "
        "the fastest allowed variant (budget unmeetable), no budget given, or contention (a "
        "less accurate variant than an idle server would choose, because of other requests).",
        "reqps",
        [
            _query(
                f"sum by (reason) (rate(edgefit_variant_selected_total{{{SEL}}}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
    )

    predicted = _timeseries(
        ids,
        "Predicted vs observed latency per variant",
        "The live latency table (the selector's p95 estimate per variant) against the p95 "
        "observed from the inference histogram. A gap means the estimates lag reality.",
        "s",
        [
            _query(
                f'max by (variant) (edgefit_variant_predicted_latency_seconds{{{SEL}, quantile="0.95"}})',
                "{{variant}} predicted p95",
                "A",
            ),
            _query(
                f"histogram_quantile(0.95, sum by (variant, le) "
                f"(rate(edgefit_inference_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{variant}} observed p95",
                "B",
            ),
        ],
    ).span(24)

    downgrades = _timeseries(
        ids,
        "Downgrades caused by other traffic",
        "Share of selections with reason `contention`: the request got a less accurate variant "
        "than an idle server would give it, because of its wait at its place in the deadline "
        "order or the workers kept for tighter budgets. By variant chosen.",
        "percentunit",
        [
            _query(
                f'sum by (variant) (rate(edgefit_variant_selected_total{{{SEL}, reason="contention"}}'
                f"[$__rate_interval])) / "
                f"scalar(sum(rate(edgefit_variant_selected_total{{{SEL}}}[$__rate_interval])))",
                "{{variant}}",
            )
        ],
    ).stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))

    cascades = _timeseries(
        ids,
        "Cascade runs",
        "Confidence cascade runs per second, by first stage and outcome (answered by the first "
        "stage, or escalated to the second); GET /models has each plan's escalation rate, live and "
        "recorded on held-out images.",
        "reqps",
        [
            _query(
                # 0 rather than no data where no plan is served (a store without plans).
                f"sum by (variant, outcome) (rate(edgefit_cascade_total{{{SEL}}}[$__rate_interval]))"
                " or vector(0)",
                "{{variant}} {{outcome}}",
            )
        ],
    )

    return "Variants", [mix, reasons, downgrades, cascades, predicted]


def _saturation_row(ids: _Ids) -> _Row:
    queue = _timeseries(
        ids,
        "Queue depth and in-flight requests",
        "Requests waiting for a worker and requests being processed.",
        "short",
        [
            _query(f"sum(edgefit_queue_depth{{{SEL}}})", "queue depth", "A"),
            _query(f"sum(edgefit_inflight_requests{{{SEL}}})", "in flight", "B"),
        ],
    )
    stages = _timeseries(
        ids,
        "Queue wait and decode time p95",
        "Where time goes before inference: waiting for a worker, and decoding the image.",
        "s",
        [
            _query(
                f"histogram_quantile(0.95, sum by (le) "
                f"(rate(edgefit_queue_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "queue wait p95",
                "A",
            ),
            _query(
                f"histogram_quantile(0.95, sum by (le) "
                f"(rate(edgefit_decode_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "decode p95",
                "B",
            ),
        ],
    )
    by_tier = _timeseries(
        ids,
        "Queue wait p95 by budget tier",
        "Waiting for a worker, by the request's budget tier (the tier is the smallest of "
        "10 ms, 20 ms, 50 ms, 100 ms, 1 s, 60 s at or above the budget; none: no budget). The "
        "queue is served earliest deadline first, so tight tiers should wait least.",
        "s",
        [
            _query(
                f"histogram_quantile(0.95, sum by (tier, le) "
                f"(rate(edgefit_queue_wait_by_tier_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "{{tier}}",
            )
        ],
    ).span(24)
    return "Saturation", [queue, stages, by_tier]


def _process_row(ids: _Ids) -> _Row:
    cpu = _timeseries(
        ids,
        "Process CPU",
        "CPU seconds per second used by the server process (1 = one full core).",
        "short",
        [
            _query(
                f"sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))",
                "{{instance}}",
            )
        ],
    )
    memory = _timeseries(
        ids,
        "Process memory",
        "Resident memory of the server process.",
        "bytes",
        [
            _query(
                f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})",
                "{{instance}} resident",
            )
        ],
    )
    return "Process", [cpu, memory]


def _endpoints_row(ids: _Ids) -> _Row:
    # Last, so the panels before it keep their ids.
    endpoints = _timeseries(
        ids,
        "Inference requests by endpoint",
        "Answers per second by the endpoint they came through (classify: /classify with its "
        "budget; v2_infer: the Open Inference Protocol, batches of cropped images) and outcome.",
        "reqps",
        [
            _query(
                f"sum by (endpoint, outcome) "
                f"(rate(edgefit_endpoint_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{endpoint}} {{outcome}}",
            )
        ],
    )
    ready = _timeseries(
        ids,
        "Ready",
        "1 while the server is ready to serve (its /readyz), 0 while loading, verifying and "
        "profiling, when its store cannot be served, or while draining.",
        "short",
        [_query(f"min by (instance) (edgefit_ready{{{SEL}}})", "{{instance}}")],
    )
    return "Endpoints and readiness", [endpoints, ready]


def build() -> dict[str, object]:
    """Returns the dashboard as the JSON object Grafana's file provisioning reads."""
    ids = _Ids()
    builder = (
        dashboard.Dashboard("edgefit gateways")
        .uid(UID)
        .description(
            "Per gateway and per variant: are latency budgets met, and if not, why "
            "(variant choice, queueing, decoding, CPU)."
        )
        .tags(["edgefit", "inference"])
        .editable()
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(_variables())  # type: ignore[arg-type]
    )
    rows = (_traffic_row, _budget_row, _variants_row, _saturation_row, _process_row, _endpoints_row)
    for make_row in rows:
        row_id = ids()
        title, panels = make_row(ids)
        builder = builder.with_row(dashboard.Row(title).id(row_id).collapsed(False))
        for panel in panels:
            builder = builder.with_panel(panel)
    encoded: dict[str, object] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
