"""Hostile clients against a running server, beside a well-behaved one.

``slow``: each connection sends a partial request head, then one more header line every
``--interval`` seconds, never finishing it (slowloris). ``idle``: each connection sends one whole
request, reads the answer and then stays open, silent (keep-alive hoarding). The attacker keeps
``--connections`` open for ``--seconds`` (with ``--reconnect``, opening a new one whenever the
server closes one: a flood no cap can fully absorb from one address). Beside it a well-behaved
client posts one JPEG after another with a budget, waiting as a 503's ``Retry-After`` asks (and
1 s after a transport error) before it tries again.

Reports the well-behaved client's answers (200s, budget met), how long the server let hostile
connections live, and the server's open descriptors idle / at most / after (from ``/proc``).

    python bench/hostile.py --port 8000 --pid $(pgrep -f 'edgefit serve') --mode slow
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Attack:
    opened: int = 0
    refused: int = 0  # could not connect, or reset before the server answered anything
    lifetimes: list[float] = field(default_factory=list)  # seconds, of the connections the server closed
    answers: dict[str, int] = field(default_factory=dict)  # first status line the server sent, counted
    still_open: list[float] = field(default_factory=list)  # ages at the end of the ones never closed


async def _hostile(
    host: str, port: int, mode: str, interval: float, reconnect: bool, attack: Attack, stop: asyncio.Event
) -> None:
    """One connection at a time; with ``reconnect`` reopened until ``stop``."""
    once = True
    while not stop.is_set() and (once or reconnect):
        once = False
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            attack.refused += 1
            await asyncio.sleep(0.1)
            continue
        attack.opened += 1
        began = time.monotonic()
        first = b""
        try:
            if mode == "slow":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            else:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            line = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout=interval)
                except TimeoutError:
                    if mode == "slow":
                        line += 1
                        writer.write(f"X-Line-{line}: {'a' * 20}\r\n".encode())
                        await writer.drain()
                    continue
                if not data:
                    break
                first = first or data
                if mode == "slow" and first:
                    break  # answered (a 408 or 503): the server is done with it
            else:
                attack.still_open.append(time.monotonic() - began)
                writer.close()
                continue
        except (ConnectionError, OSError):
            pass
        status = first.split(b"\r\n", 1)[0].decode("latin-1")[:12] if first else "closed"
        if mode == "idle" and status.endswith("200"):
            # The answer to its one request; what matters is how it ended.
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                while (
                    not stop.is_set() and await asyncio.wait_for(reader.read(65536), timeout=interval) != b""
                ):
                    pass
            if stop.is_set():
                attack.still_open.append(time.monotonic() - began)
                writer.close()
                continue
        attack.answers[status] = attack.answers.get(status, 0) + 1
        attack.lifetimes.append(time.monotonic() - began)
        writer.close()


def run_attack(
    host: str, port: int, mode: str, connections: int, seconds: float, interval: float, reconnect: bool
) -> Attack:
    attack = Attack()

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_hostile(host, port, mode, interval, reconnect, attack, stop))
            for _ in range(connections)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return attack


@dataclass
class Polite:
    statuses: list[int] = field(default_factory=list)
    met: int = 0
    failures: list[str] = field(default_factory=list)


def run_polite(
    host: str, port: int, image: bytes, budget: str, stop: threading.Event, polite: Polite
) -> None:
    """One request after another on one keep-alive connection (reopened when closed)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    while not stop.is_set():
        try:
            conn.request(
                "POST", f"/classify?budget={budget}", body=image, headers={"content-type": "image/jpeg"}
            )
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            polite.failures.append(type(exc).__name__)
            polite.statuses.append(0)
            conn.close()
            time.sleep(1.0)  # a client's backoff before it tries again
            continue
        polite.statuses.append(response.status)
        if response.status == 200 and json.loads(body)["budget_met"]:
            polite.met += 1
        elif response.status == 503:
            time.sleep(float(response.getheader("retry-after") or 1))
    conn.close()


def raise_own_fd_limit(connections: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, connections + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def measure(
    host: str,
    port: int,
    pid: int,
    mode: str,
    connections: int,
    seconds: float,
    interval: float,
    image: bytes,
    budget: str,
    reconnect: bool = False,
    settle_seconds: float = 20.0,
) -> dict[str, Any]:
    """The attack with the well-behaved client beside it; then the descriptors once it is over."""
    raise_own_fd_limit(connections)
    idle = open_fds(pid)
    polite, stop = Polite(), threading.Event()
    peak = [idle]

    def sample() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], open_fds(pid))

    threads = [
        threading.Thread(target=run_polite, args=(host, port, image, budget, stop, polite)),
        threading.Thread(target=sample),
    ]
    for t in threads:
        t.start()
    try:
        attack = run_attack(host, port, mode, connections, seconds, interval, reconnect)
    finally:
        stop.set()
        for t in threads:
            t.join()
    deadline = time.monotonic() + settle_seconds
    after = open_fds(pid)
    while after > idle and time.monotonic() < deadline:
        time.sleep(0.2)
        after = open_fds(pid)
    answered = len(polite.statuses)
    ok = sum(1 for s in polite.statuses if s == 200)
    return {
        "mode": mode,
        "connections": connections,
        "reconnect": reconnect,
        "seconds": seconds,
        "polite": {
            "requests": answered,
            "ok_200": ok,
            "ok_share": ok / answered if answered else None,
            "budget": budget,
            "budget_met_share": polite.met / ok if ok else None,
            "statuses": {str(s): polite.statuses.count(s) for s in sorted(set(polite.statuses))},
            "failures": sorted(set(polite.failures)),
        },
        "hostile": {
            "opened": attack.opened,
            "refused_connects": attack.refused,
            "closed_by_server": len(attack.lifetimes),
            "lifetime_max_s": round(max(attack.lifetimes), 2) if attack.lifetimes else None,
            "still_open_at_end": len(attack.still_open),
            "oldest_open_at_end_s": round(max(attack.still_open), 2) if attack.still_open else None,
            "answers": attack.answers,
        },
        "fds": {"idle": idle, "max": peak[0], "after": after},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (for /proc)")
    parser.add_argument("--mode", choices=("slow", "idle"), default="slow")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between header lines")
    parser.add_argument("--budget", default="20ms")
    parser.add_argument("--reconnect", action="store_true", help="reopen each connection the server closes")
    parser.add_argument(
        "--image", type=Path, default=REPO.parent / "shared/imagenet-sample/n02123045_tabby.JPEG"
    )
    args = parser.parse_args()
    report = measure(
        args.host,
        args.port,
        args.pid,
        args.mode,
        args.connections,
        args.seconds,
        args.interval,
        args.image.read_bytes(),
        args.budget,
        args.reconnect,
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
