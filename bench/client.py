"""A small, cheap HTTP load client for the benchmark: closed loop and open loop.

Threads with one keep-alive ``http.client`` connection each. The client shares the machine's two
cores with the server, so it does as little as it can per request: bodies are encoded once, and a
response is parsed only for the few fields the report needs. Its own CPU use is measured
(``time.process_time`` of this process, which runs nothing else while a load runs).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Payload:
    """One request, encoded once: the path with its query, the body and its content type."""

    path: str
    body: bytes
    content_type: str
    label: int | None = None  # the image's true class, where delivered accuracy is measured


def raw_payloads(path: str, images: Sequence[bytes]) -> list[Payload]:
    return [Payload(path, data, "image/jpeg") for data in images]


def multipart_payloads(path: str, images: Sequence[bytes], field_name: str = "file") -> list[Payload]:
    """The same image bytes as ``multipart/form-data`` (how BentoML clients send files)."""
    out = []
    for i, data in enumerate(images):
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="image{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        out.append(Payload(path, body, f"multipart/form-data; boundary={boundary}"))
    return out


@dataclass
class Sample:
    """One answered (or failed) request. Server fields are ``None`` when the server sent none."""

    status: int
    client_ms: float
    path: str = ""  # the request's path and query
    late_ms: float = 0.0  # open loop only: how long after its scheduled time it was sent
    variant: str | None = None
    top1: float | None = None
    label: int | None = None  # the payload's true class
    class_id: int | None = None  # the top prediction
    budget_met: bool | None = None
    total_ms: float | None = None
    queue_ms: float | None = None
    decode_ms: float | None = None
    inference_ms: float | None = None
    plan: str | None = None  # the confidence cascade plan that ran, if one did
    escalation: str | None = None  # how it ended: answered, escalated or out_of_time

    @property
    def overhead_ms(self) -> float | None:
        """Server time not spent queueing, decoding or inferring (BENCH.md's overhead)."""
        if None in (self.total_ms, self.queue_ms, self.decode_ms, self.inference_ms):
            return None
        return self.total_ms - self.queue_ms - self.decode_ms - self.inference_ms  # type: ignore[operator]


@dataclass
class Run:
    samples: list[Sample]
    wall_s: float
    client_cpu_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s else 0.0


def _parse(status: int, body: bytes, sample: Sample) -> None:
    if status != 200:
        return
    doc = json.loads(body)
    model = doc.get("model")
    if isinstance(model, dict):  # edgefit
        sample.variant = model.get("name")
        sample.top1 = model.get("top1")
        sample.budget_met = doc.get("budget_met")
        predictions = doc.get("predictions") or []
        sample.class_id = predictions[0].get("class_id") if predictions else None
        timing = doc.get("timing") or {}
        sample.total_ms = timing.get("total_ms")
        sample.queue_ms = timing.get("queue_ms")
        sample.decode_ms = timing.get("decode_ms")
        sample.inference_ms = timing.get("inference_ms")
        cascade = doc.get("cascade") or {}
        sample.plan = cascade.get("plan")
        sample.escalation = cascade.get("outcome")
    elif isinstance(model, str):  # the peer
        sample.variant = model


class _Connection:
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def request(self, payload: Payload) -> Sample:
        start = time.perf_counter()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self.conn.request(
                    "POST",
                    payload.path,
                    body=payload.body,
                    headers={"Content-Type": payload.content_type},
                )
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                # The server may close an idle keep-alive connection: reconnect once.
                self.close()
                if attempt:
                    raise
        sample = Sample(
            status=response.status,
            client_ms=(time.perf_counter() - start) * 1e3,
            path=payload.path,
            label=payload.label,
        )
        _parse(response.status, body, sample)
        if response.will_close:
            self.close()
        return sample

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def closed_loop(
    host: str, port: int, payloads: Sequence[Payload], concurrency: int, duration_s: float
) -> Run:
    """``concurrency`` clients, each sending its next request as soon as the last is answered."""
    samples: list[Sample] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + 0.05
    deadline = start_at + duration_s

    def client(index: int) -> None:
        conn = _Connection(host, port, timeout_s=30.0)
        mine: list[Sample] = []
        i = index
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        try:
            while time.perf_counter() < deadline:
                mine.append(conn.request(payloads[i % len(payloads)]))
                i += concurrency
        except Exception as exc:  # reported, not raised: the run's other clients still count
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        with lock:
            samples.extend(mine)

    cpu0 = time.process_time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_at
    return Run(samples, wall, time.process_time() - cpu0, errors)


def closed_loop_count(host: str, port: int, payloads: Sequence[Payload], count: int) -> Run:
    """``count`` requests one after another on one keep-alive connection."""
    conn = _Connection(host, port, timeout_s=30.0)
    cpu0, start = time.process_time(), time.perf_counter()
    try:
        samples = [conn.request(payloads[i % len(payloads)]) for i in range(count)]
    finally:
        conn.close()
    return Run(samples, time.perf_counter() - start, time.process_time() - cpu0)


class Gate:
    """For a server that an orchestrator kills and restarts: while it is down, requests are not
    sent (a load balancer routes none to an unready instance), and the requests on the wire are
    counted, so that those lost to a kill can be told from the others."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = True
        self.in_flight = 0
        self.held_back = 0  # requests that fell due while the server was down

    def close(self) -> int:
        """The server is going down now: returns the requests in flight."""
        with self.lock:
            self.up = False
            return self.in_flight

    def open(self) -> None:
        with self.lock:
            self.up = True

    def enter(self) -> bool:
        """Whether a request may be sent now (then it counts as in flight until ``leave``)."""
        with self.lock:
            if not self.up:
                self.held_back += 1
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def open_loop(
    host: str,
    port: int,
    payloads: Sequence[Payload],
    rate_per_s: float,
    duration_s: float,
    connections: int = 128,
    drain_s: float = 30.0,
    gate: Gate | None = None,
) -> Run:
    """Offer ``rate_per_s`` requests per second for ``duration_s``, whatever the answers.

    Request ``i`` is due at ``i / rate``; a free connection sends it then. ``connections`` bounds
    the requests in flight: a send that waited for a connection is recorded as late, so a server
    that stalls cannot quietly lower the load it is offered. ``wall_s`` is the offering period,
    so answers per ``wall_s`` is a rate over the load's own duration. With a ``gate``, requests
    due while it is closed are not sent.
    """
    total = int(rate_per_s * duration_s)
    samples: list[Sample] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))
    start_at = time.perf_counter() + 0.1

    def client() -> None:
        conn = _Connection(host, port, timeout_s=drain_s + duration_s)
        mine: list[Sample] = []
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                due = start_at + i / rate_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                late = max(0.0, time.perf_counter() - due) * 1e3
                if gate is not None and not gate.enter():
                    continue
                try:
                    sample = conn.request(payloads[i % len(payloads)])
                except Exception as exc:  # one lost request, not a lost client
                    conn.close()
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    if gate is not None:
                        gate.leave()
                sample.late_ms = late
                mine.append(sample)
        finally:
            conn.close()
            with lock:
                samples.extend(mine)

    cpu0 = time.process_time()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Run(samples, duration_s, time.process_time() - cpu0, errors)
