"""The contract, through real HTTP to a real `edgefit serve` (uvicorn) on loopback."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from model_store.evaluate import evaluate, labelled_images
from model_store.imaging import load_tensor
from model_store.manifest import Manifest, Preprocessing
from model_store.store import Store, open_store
from tests.conftest import Server
from tests.unit.test_imaging import png_header_only

JPEG = {"content-type": "image/jpeg"}


def classify(
    server: Server, body: bytes, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/classify", params=params, content=body, headers=headers or JPEG, timeout=30
    )


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["type"] == f"/errors/{kind}"
    assert problem["title"] and problem["detail"]
    assert "Traceback" not in response.text and "Error(" not in problem["detail"]
    return problem


def read_reply(sock: socket.socket) -> str:
    """One whole HTTP response (headers and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


# -- answers -----------------------------------------------------------------------------------


def test_classify_answers_per_contract(server: Server, tabby: bytes) -> None:
    response = classify(server, tabby, budget="1000ms", top_k="3")
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["name"] == response.headers["x-model-variant"]
    assert set(body["model"]) == {
        "name",
        "family",
        "resolution",
        "precision",
        "top1",
        "top1_source",
        "size_bytes",
    }
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert body["predictions"][0]["class_id"] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert body["budget_ms"] == 1000.0 and body["budget_met"] is True and body["predicted_ms"] > 0
    timing = body["timing"]
    assert timing["total_ms"] >= timing["decode_ms"] + timing["inference_ms"]
    for part in ("queue;dur=", "decode;dur=", "infer;dur=", "total;dur="):
        assert part in response.headers["server-timing"]
    assert response.headers["x-request-id"]


def test_no_budget_means_most_accurate_and_nulls(server: Server, tabby: bytes, store_dir: Path) -> None:
    body = classify(server, tabby).json()
    best = max(open_store(store_dir).manifest.variants, key=lambda v: v.top1 or 0)
    assert body["model"]["name"] == best.name
    assert body["budget_ms"] is None and body["predicted_ms"] is None and body["budget_met"] is None


def test_request_id_is_echoed(server: Server, tabby: bytes) -> None:
    response = classify(server, tabby, {**JPEG, "x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp(server: Server, tabby: bytes, fmt: str) -> None:
    out = io.BytesIO()
    Image.open(io.BytesIO(tabby)).save(out, format=fmt)
    response = classify(
        server, out.getvalue(), {"content-type": f"image/{fmt.lower()}"}, model="lite0-224-fp32"
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["class_id"] in (281, 282, 285)


def test_multipart_and_octet_stream(server: Server, tabby: bytes) -> None:
    multipart = httpx.post(
        f"{server.url}/classify",
        files={"file": ("cat.jpg", tabby, "image/jpeg")},
        data={"note": "x"},
        timeout=30,
    )
    assert multipart.status_code == 200, multipart.text
    octets = classify(server, tabby, {"content-type": "application/octet-stream"})
    assert octets.json()["predictions"] == multipart.json()["predictions"]


def test_pinned_http_answers_equal_in_process_evaluation(
    server: Server, store_dir: Path, sample_dir: Path, fast_int8: str
) -> None:
    store = open_store(store_dir)
    images = labelled_images(sample_dir)[::10][:100]
    for name in ("lite0-224-fp32", fast_int8):
        (expected,) = evaluate(store, [store.manifest.variant(name)], images)

        def post(image, name=name) -> int:
            response = classify(server, image.path.read_bytes(), model=name, top_k="1")
            assert response.headers["x-model-variant"] == name
            return int(response.json()["predictions"][0]["class_id"])

        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(post, images))
        assert served == list(expected.predictions)


def test_selection_on_an_idle_server(server: Server, tabby: bytes, store_dir: Path) -> None:
    variants = {v["name"]: v for v in httpx.get(f"{server.url}/models").json()["variants"]}
    best = max(variants.values(), key=lambda v: v["top1"])
    assert classify(server, tabby, budget="1000ms", cascade="false").json()["model"]["name"] == best["name"]
    # With cascades, the most accurate may be a plan ending in it (ranked as that stage), whose
    # first stage answers when it is sure.
    answer = classify(server, tabby, budget="1000ms").json()
    assert answer["model"]["name"] == best["name"] or answer["cascade"]["plan"].endswith(f">{best['name']}")

    fastest = min(variants.values(), key=lambda v: v["latency_ms"]["p95"])
    # Just above the fastest variant's p95 as the server now predicts it: room for its decode
    # (a few ms for a 500x375 JPEG) and little else.
    budget = fastest["latency_ms"]["p95"] + 8.0
    answers = [classify(server, tabby, budget=f"{budget:.3f}ms").json() for _ in range(5)]
    for answer in answers:
        chosen = variants[answer["model"]["name"]]
        assert chosen["top1"] < best["top1"]
        assert chosen["latency_ms"]["profiled_p95"] < budget
    assert sum(a["budget_met"] for a in answers) >= 3

    small = classify(server, tabby, max_size="8MB").json()["model"]
    assert small["size_bytes"] <= 8_000_000 and small["precision"] == "int8"
    accurate = classify(server, tabby, budget="1ms", min_accuracy="77%").json()
    assert accurate["model"]["top1"] >= 0.77 and accurate["budget_met"] is False
    assert_problem(classify(server, tabby, max_size="1MB"), 422, "no-variant-allowed")
    assert_problem(classify(server, tabby, min_accuracy="99%"), 422, "no-variant-allowed")


def test_a_client_asking_in_turn_is_never_shed(server: Server, tabby: bytes) -> None:
    # Budgets swept from the fastest variant's median to past the slowest one's p95, one request
    # at a time, while another client keeps one worker busy: a job that only just fitted can turn
    # past hope before the free worker takes it, and is then answered late, never refused.
    latencies = [v["latency_ms"] for v in httpx.get(f"{server.url}/models").json()["variants"]]
    low = min(lat["p50"] for lat in latencies)
    high = max(lat["p95"] for lat in latencies) + 8.0
    budgets = [low + (high - low) * i / 150 for i in range(151)]
    swept = threading.Event()

    def unbudgeted() -> list[int]:
        statuses = []
        while not swept.is_set():
            statuses.append(classify(server, tabby).status_code)
        return statuses

    with ThreadPoolExecutor(1) as pool:
        beside = pool.submit(unbudgeted)
        try:
            statuses = [classify(server, tabby, budget=f"{b:.3f}ms").status_code for b in budgets]
        finally:
            swept.set()
        assert set(beside.result()) == {200}
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_models_lists_the_live_table(server: Server) -> None:
    variants = httpx.get(f"{server.url}/models").json()["variants"]
    assert len(variants) >= 12
    for v in variants:
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p95"]
        assert 0 < v["latency_ms"]["profiled_p50"] <= v["latency_ms"]["profiled_p95"]
        assert {
            "name",
            "family",
            "resolution",
            "precision",
            "size_bytes",
            "top1",
            "top1_source",
            "selected",
        } <= set(v)


# -- every error row of the contract --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"plain text, not an image", b"\xff\xd8\xff\xe0" + b"\0" * 200],
    ids=["empty", "text", "corrupt"],
)
def test_400_not_an_image(server: Server, body: bytes) -> None:
    assert_problem(classify(server, body), 400, "invalid-image")


def test_400_truncated_jpeg(server: Server, tabby: bytes) -> None:
    assert_problem(classify(server, tabby[: len(tabby) // 2], model="lite0-224-int8"), 400, "invalid-image")


def test_400_multipart_without_file(server: Server) -> None:
    response = httpx.post(f"{server.url}/classify", files={"image": ("x.jpg", b"abc", "image/jpeg")})
    assert_problem(response, 400, "invalid-image")


def test_413_declared_body_too_large_is_answered_without_reading_it(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        started = time.monotonic()
        reply = read_reply(s)
        assert time.monotonic() - started < 1.0
    assert reply.startswith("HTTP/1.1 413") and "/errors/body-too-large" in reply


def test_413_chunked_body_too_large(server: Server) -> None:
    def chunks():
        for _ in range(20):
            yield b"\0" * (1 << 20)

    response = httpx.post(f"{server.url}/classify", content=chunks(), headers=JPEG, timeout=30)
    assert_problem(response, 413, "body-too-large")


def test_413_pixel_bomb_from_the_header(server: Server) -> None:
    started = time.monotonic()
    response = classify(server, png_header_only(60000, 60000), {"content-type": "image/png"})
    assert time.monotonic() - started < 1.0
    assert_problem(response, 413, "image-too-large")


def test_415_unsupported_content_type(server: Server, tabby: bytes) -> None:
    assert_problem(classify(server, tabby, {"content-type": "text/plain"}), 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ({"budget": "fast"}, "invalid-parameter"),
        ({"budget": "0ms"}, "invalid-parameter"),
        ({"budget": "61s"}, "invalid-parameter"),
        ({"max_size": "big"}, "invalid-parameter"),
        ({"min_accuracy": "2"}, "invalid-parameter"),
        ({"top_k": "0"}, "invalid-parameter"),
        ({"top_k": "21"}, "invalid-parameter"),
        ({"strict": "perhaps"}, "invalid-parameter"),
        ({"bugdet": "20ms"}, "invalid-parameter"),
        ({"model": "../../etc/passwd"}, "unknown-model"),
        ({"model": "resnet50"}, "unknown-model"),
        ({"max_size": "100KB"}, "no-variant-allowed"),
        ({"budget": "0.01ms", "strict": "true"}, "budget-unmeetable"),
    ],
)
def test_422(server: Server, tabby: bytes, params: dict[str, str], kind: str) -> None:
    assert_problem(classify(server, tabby, **params), 422, kind)


def test_408_slow_body(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
            + b"\xff\xd8" * 10
        )
        started = time.monotonic()
        reply = read_reply(s)
        waited = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408") and "/errors/body-timeout" in reply
    assert 1.0 < waited < 5.0  # the server's 2 s deadline, not the client's patience


def test_bad_requests_do_not_disturb_good_ones(server: Server, tabby: bytes) -> None:
    def bad(i: int) -> int:
        return classify(server, b"junk" * i).status_code

    def good(_: int) -> int:
        return classify(server, tabby, budget="1000ms").status_code

    with ThreadPoolExecutor(8) as pool:
        bad_codes = pool.map(bad, range(40))
        good_codes = pool.map(good, range(10))
        assert set(bad_codes) == {400} and set(good_codes) == {200}


@pytest.fixture(scope="module")
def tight(store_dir: Path, tmp_path_factory: pytest.TempPathFactory, fast_int8: str):
    from tests.conftest import start_server

    s = start_server(
        store_dir,
        tmp_path_factory.mktemp("tight"),
        variants=f"{fast_int8},lite2-260-fp32",
        inference_timeout_seconds="0.002",
        max_queue_wait_seconds="0.01",
        workers="1",
    )
    yield s
    assert s.stop() == 0


def test_504_inference_past_the_hard_timeout(tight: Server, tabby: bytes) -> None:
    problem = assert_problem(classify(tight, tabby, model="lite2-260-fp32"), 504, "inference-timeout")
    assert "aborted" in problem["detail"]
    # The aborted worker is free again: the server still answers.
    assert httpx.get(f"{tight.url}/readyz").status_code == 200


def test_503_shedding_with_retry_after(tight: Server, tabby: bytes, fast_int8: str) -> None:
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: classify(tight, tabby, model=fast_int8), range(48)))
    shed = [r for r in responses if r.status_code == 503]
    assert shed, [r.status_code for r in responses]
    for r in shed:
        assert_problem(r, 503, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
    assert {r.status_code for r in responses} <= {200, 503, 504}


def test_503_not_ready_when_a_file_does_not_match_its_hash(
    store_dir: Path, tmp_path: Path, tabby: bytes
) -> None:
    from tests.conftest import start_server

    store = open_store(store_dir)
    variant = store.manifest.variant("lite0-224-int8")
    (tmp_path / "manifest.json").write_text((store_dir / "manifest.json").read_text())
    data = bytearray(store.path_of(variant).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / variant.file).write_bytes(bytes(data))
    s = start_server(tmp_path, tmp_path, wait_ready=False, variants=variant.name)
    try:
        time.sleep(1.0)
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        ready = httpx.get(f"{s.url}/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        response = classify(s, tabby)
        assert_problem(response, 503, "not-ready")
        assert "refusing to use" in s.log.read_text() and "refusing to use" in ready.json()["detail"]
        assert "edgefit_ready 0.0" in httpx.get(f"{s.url}/metrics").text
    finally:
        assert s.stop() == 0


def test_a_corrupt_file_leaves_its_variant_out_and_a_reload_after_repair_serves_it(
    store_dir: Path, tmp_path: Path, tabby: bytes, fast_int8: str
) -> None:
    from tests.conftest import start_server

    store = open_store(store_dir)
    kept, rotten = store.manifest.variant("lite0-224-fp32"), store.manifest.variant(fast_int8)
    assert kept.file != rotten.file
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["variants"] = [v for v in manifest["variants"] if v["name"] in (kept.name, rotten.name)]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # Every file both use (their graphs, the weights files they keep their tensors in).
    for file in Store(
        store_dir, Manifest(variants=(kept, rotten), reference=store.manifest.reference)
    ).files():
        shutil.copy(store_dir / file, tmp_path)
    good = store.path_of(rotten).read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01  # one bit, as flash storage loses them
    (tmp_path / rotten.file).write_bytes(bytes(flipped))
    s = start_server(tmp_path, tmp_path)
    try:
        ready = httpx.get(f"{s.url}/readyz").json()
        assert ready["variants"] == 1 and list(ready["unavailable"]) == [rotten.name], ready
        assert rotten.name in ready["detail"] and "sha256" in ready["unavailable"][rotten.name]
        assert (
            f'edgefit_variant_unavailable{{variant="{rotten.name}"}} 1.0'
            in httpx.get(f"{s.url}/metrics").text
        )
        assert rotten.name in httpx.get(f"{s.url}/").text.split('id="unavailable"')[1]
        assert f"variant {rotten.name} is unavailable" in s.log.read_text()
        answer = classify(s, tabby, budget="50ms")
        assert answer.status_code == 200 and answer.json()["model"]["name"] == kept.name

        (tmp_path / rotten.file).write_bytes(good)
        assert httpx.post(f"{s.url}/admin/reload", timeout=120).status_code == 200
        ready = httpx.get(f"{s.url}/readyz").json()
        assert ready["variants"] == 2 and ready["unavailable"] == {}
        assert (
            f'edgefit_variant_unavailable{{variant="{rotten.name}"}} 0.0'
            in httpx.get(f"{s.url}/metrics").text
        )
        assert classify(s, tabby, model=rotten.name).status_code == 200
    finally:
        assert s.stop() == 0


# -- other endpoints -------------------------------------------------------------------------------


def test_health_and_metrics(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "edgefit_requests_total" in metrics and "edgefit_variant_info" in metrics


def test_open_inference_protocol(server: Server, tabby: bytes, fast_int8: str) -> None:
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "edgefit" and meta["machine"]
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    model = httpx.get(f"{server.url}/v2/models/{fast_int8}").json()
    variant = next(v for v in httpx.get(f"{server.url}/models").json()["variants"] if v["name"] == fast_int8)
    size = variant["resolution"]
    assert model["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, size, size, 3]}
    tensor = load_tensor(tabby, Preprocessing.model_validate(variant["preprocessing"]), 50_000_000)
    payload = {
        "inputs": [
            {
                "name": "image",
                "shape": list(tensor.shape),
                "datatype": "UINT8",
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    out = httpx.post(f"{server.url}/v2/models/{fast_int8}/infer", json=payload, timeout=30).json()
    logits = out["outputs"][0]["data"]
    assert out["outputs"][0]["shape"] == [1, 1000] and max(range(1000), key=logits.__getitem__) in (
        281,
        282,
        285,
    )
    missing = httpx.get(f"{server.url}/v2/models/nope")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    bad = httpx.post(f"{server.url}/v2/models/{fast_int8}/infer", json={"inputs": []})
    assert bad.status_code == 422 and set(bad.json()) == {"error"}
    out_of_range = {"inputs": [{**payload["inputs"][0], "data": [256] * tensor.size}]}
    bad = httpx.post(f"{server.url}/v2/models/{fast_int8}/infer", json=out_of_range)
    assert bad.status_code == 422 and "0..255" in bad.json()["error"]


def test_unknown_route_is_a_problem_document(server: Server) -> None:
    assert_problem(httpx.get(f"{server.url}/nope"), 404, "not-found")
    assert_problem(httpx.get(f"{server.url}/classify"), 405, "method-not-allowed")


def test_admin_reload_needs_the_key(store_dir: Path, tmp_path: Path, fast_int8: str) -> None:
    from tests.conftest import start_server

    s = start_server(store_dir, tmp_path, variants=fast_int8, api_key="sesame")
    try:
        assert_problem(httpx.post(f"{s.url}/admin/reload"), 401, "unauthorized")
        assert_problem(
            httpx.post(f"{s.url}/admin/reload", headers={"authorization": "Bearer wrong"}),
            401,
            "unauthorized",
        )
        ok = httpx.post(f"{s.url}/admin/reload", headers={"authorization": "Bearer sesame"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["variants"] == [fast_int8]
    finally:
        assert s.stop() == 0


def test_access_log_is_one_json_line_per_request(server: Server, tabby: bytes) -> None:
    response = classify(server, tabby, {**JPEG, "x-request-id": "log-me"}, budget="50ms")
    time.sleep(0.2)
    # Nothing before the `{`: a log shipper parses each access line whole.
    entries = [json.loads(line) for line in server.log.read_text().splitlines() if '"request_id"' in line]
    assert entries and all(isinstance(e, dict) for e in entries)
    (entry,) = (e for e in entries if e["request_id"] == "log-me")
    assert entry["status"] == 200 and entry["variant"] == response.headers["x-model-variant"]
    assert entry["budget_ms"] == 50.0 and entry["total_ms"] > 0 and "inference_ms" in entry


def test_sigterm_drains_in_flight_requests_and_exits_0(store_dir: Path, tmp_path: Path, tabby: bytes) -> None:
    from tests.conftest import start_server

    s = start_server(store_dir, tmp_path, variants="lite0-224-int8")
    host, port = s.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A request half-way through its body when the orchestrator says stop.
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(tabby)}\r\n\r\n".encode()
            + tabby[:1000]
        )
        time.sleep(0.2)
        s.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert s.process.poll() is None  # still draining
        sock.sendall(tabby[1000:])
        reply = read_reply(sock)
    assert reply.startswith("HTTP/1.1 200"), reply[:300]
    assert s.process.wait(timeout=30) == 0


def test_idle_server_reprobes_variants_nobody_chose(store_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import start_server

    s = start_server(
        store_dir, tmp_path, variants="lite0-160-fp32,lite0-224-int8", reprobe_idle_seconds="0.5"
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ages = [
                v["latency_ms"]["last_run_seconds_ago"]
                for v in httpx.get(f"{s.url}/models").json()["variants"]
            ]
            if all(age is not None and age < 3 for age in ages):
                break
            time.sleep(0.5)
        assert all(age is not None and age < 3 for age in ages), ages
    finally:
        assert s.stop() == 0
