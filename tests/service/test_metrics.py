"""The metrics contract on a real server: names, types, buckets, bounded cardinality."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

CONTRACT = {
    "edgefit_requests": ("counter", {"variant", "outcome"}),
    "edgefit_request_duration_seconds": ("histogram", {"variant"}),
    "edgefit_inference_duration_seconds": ("histogram", {"variant"}),
    "edgefit_decode_duration_seconds": ("histogram", set()),
    "edgefit_queue_wait_seconds": ("histogram", set()),
    "edgefit_budget": ("counter", {"variant", "result"}),
    "edgefit_budget_slack_seconds": ("histogram", set()),
    "edgefit_variant_selected": ("counter", {"variant", "reason"}),
    "edgefit_variant_predicted_latency_seconds": ("gauge", {"variant", "quantile"}),
    "edgefit_variant_info": ("gauge", {"variant", "family", "resolution", "precision", "top1"}),
    "edgefit_inflight_requests": ("gauge", set()),
    "edgefit_queue_depth": ("gauge", set()),
    "edgefit_ready": ("gauge", set()),
    "edgefit_cascade": ("counter", {"variant", "outcome"}),
}
# Added beside the contract (extensions, never renames): queue wait by budget tier, the
# selection reason `contention` (a downgrade caused by other traffic), and requests by endpoint.
EXTENSIONS = {
    "edgefit_queue_wait_by_tier_seconds": ("histogram", {"tier"}),
    "edgefit_endpoint_requests": ("counter", {"endpoint", "outcome"}),
    "edgefit_endpoint_request_duration_seconds": ("histogram", {"endpoint"}),
}
ENDPOINTS = {"classify", "v2_infer"}
TIERS = {"10ms", "20ms", "50ms", "100ms", "1s", "60s", "none"}
REASONS = {"best_fit", "pinned", "fallback", "no_budget", "contention"}
BUDGET_TIERS = {0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0}


def scrape(server: Server) -> dict:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}


def series(families: dict) -> set[tuple]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in families.values()
        if f.name.startswith("edgefit_")
        for s in f.samples
    }


def test_names_types_labels_and_buckets(server: Server) -> None:
    families = scrape(server)
    for name, (kind, labels) in (CONTRACT | EXTENSIONS).items():
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    for name in ("edgefit_request_duration_seconds", "edgefit_inference_duration_seconds"):
        edges = {float(s.labels["le"]) for s in families[name].samples if s.name.endswith("_bucket")}
        assert edges >= BUDGET_TIERS
    slack = {
        float(s.labels["le"]) for s in families["edgefit_budget_slack_seconds"].samples if "le" in s.labels
    }
    assert min(slack) <= -0.1 and 0.5 in slack and 0.0 in slack
    variants = {s.labels["variant"] for s in families["edgefit_variant_info"].samples}
    served = {v["name"] for v in httpx.get(f"{server.url}/models").json()["variants"]}
    assert variants == served
    # Every variant's label sets exist before any traffic picks it.
    outcomes = {(s.labels["variant"], s.labels["outcome"]) for s in families["edgefit_requests"].samples}
    assert {(v, o) for v in served for o in ("ok", "client_error", "shed", "error")} <= outcomes
    # And every cascade plan's, by its first stage.
    firsts = {p["small"] for p in httpx.get(f"{server.url}/models").json()["cascades"]}
    cascades = {(s.labels["variant"], s.labels["outcome"]) for s in families["edgefit_cascade"].samples}
    assert {(v, o) for v in firsts for o in ("answered", "escalated")} <= cascades
    tiers = {s.labels["tier"] for s in families["edgefit_queue_wait_by_tier_seconds"].samples}
    assert tiers == TIERS
    reasons = {s.labels["reason"] for s in families["edgefit_variant_selected"].samples}
    assert reasons == REASONS
    endpoints = {s.labels["endpoint"] for s in families["edgefit_endpoint_requests"].samples}
    assert endpoints == ENDPOINTS
    assert families["edgefit_ready"].samples[0].value == 1
    assert "process_resident_memory_bytes" in families or "process_resident_memory" in families


def test_malformed_requests_do_not_create_series(server: Server, tabby: bytes) -> None:
    httpx.post(f"{server.url}/classify", content=tabby, headers={"content-type": "image/jpeg"}, timeout=30)
    before = series(scrape(server))
    attempts = [
        {"model": "made-up-model-1"},
        {"model": "../../x"},
        {"budget": "17.3ms", "model": "nope"},
        {"budget": "abc"},
        {"max_size": "-1"},
        {"min_accuracy": "3"},
        {"top_k": "99"},
        {"random": "1"},
    ]
    for params in attempts:
        httpx.post(
            f"{server.url}/classify", params=params, content=tabby, headers={"content-type": "image/jpeg"}
        )
    for body in (b"", b"junk", b"\x89PNG\r\n\x1a\n"):
        httpx.post(f"{server.url}/classify", params={"budget": "13.7ms"}, content=body)
    for path in ("/classify/extra", "/nope", "/v2/models/made-up/infer", "/admin/../etc"):
        httpx.post(f"{server.url}{path}", content=b"x")
    after_families = scrape(server)
    after = series(after_families)
    assert after == before
    errors = sum(
        s.value
        for s in after_families["edgefit_requests"].samples
        if s.name == "edgefit_requests_total" and s.labels["outcome"] == "client_error"
    )
    assert errors >= len(attempts) + 3
