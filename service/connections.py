"""Connections on a hostile network: a deadline for the request head, and a cap on open ones.

Every open connection holds a file descriptor. Without a deadline a client that sends a partial
request head, then a header line every few seconds, holds one for ever; once the process runs
out of descriptors the event loop cannot accept, and new connections are reset — a few hundred
such clients take the service down. So (in uvicorn's HTTP protocol, before the app sees a
request):

- the request head must arrive within ``header_timeout_seconds`` of the connection (or of its
  first byte, on a kept-alive connection); past it the connection is closed (with a 408 when
  part of a head came);
- past ``cap`` open connections (derived from the descriptor limit), the oldest connections doing
  nothing useful are closed to make room: idle or silent ones (at least ``QUIET_GRACE_SECONDS``
  old: a head may be waiting unread in the socket, as in a burst of accepts that runs before any
  read) and ones still dribbling their head (answered 503 with ``Retry-After``). A new
  connection is let in meanwhile, so a client that sends its request at once is served while
  slow ones are pushed out;
- past ``ceiling`` (the descriptors left), a new connection is answered 503 with
  ``Retry-After`` and closed at once: accepting must never fail for want of a descriptor, or
  the event loop resets connections wholesale;
- from three quarters of the cap on, answers carry ``Connection: close``, so idle keep-alive
  connections do not pile up.

The body's deadline is the app's (``body_timeout_seconds``, a 408 from the endpoint).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter, OrderedDict
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: the listening socket, the event loop's
# own, logs, store files read during a reload, the latency table, /proc reads, Prometheus.
FD_RESERVE = 64
# Without a configured limit: a cap well below what a gateway's memory and two cores can serve.
DEFAULT_MAX_CONNECTIONS = 4096
# A connection that has sent nothing may have its head waiting unread in its socket buffer (a
# burst of accepts runs before any read): it is not closed to make room before this age.
QUIET_GRACE_SECONDS = 1.0
LOG_EVERY_SECONDS = 10.0


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (a container's soft 1024 is common);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_caps(fd_limit: int, configured: int | None) -> tuple[int, int]:
    """``(cap, ceiling)``: connections open before idle and slow ones are closed to make room,
    and connections open at most, which leaves ``FD_RESERVE`` descriptors free. The room
    between the two takes bursts of new connections until their first bytes are read."""
    ceiling = max(16, fd_limit - FD_RESERVE)
    most = ceiling * 3 // 4
    cap = min(configured or DEFAULT_MAX_CONNECTIONS, most)
    if configured is not None and configured > most:
        log.warning(
            "connection limit %d is more than the descriptor limit %d allows: using %d",
            configured,
            fd_limit,
            cap,
        )
    return max(1, cap), ceiling


def _problem(status: int, kind: str, title: str, detail: str, headers: tuple[str, ...] = ()) -> bytes:
    body = orjson.dumps({"type": f"/errors/{kind}", "title": title, "status": status, "detail": detail})
    head = [
        f"HTTP/1.1 {status} {title}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OVER_CAPACITY = _problem(
    503,
    "too-many-connections",
    "Too many connections",
    "the server holds as many connections as it can; retry shortly",
    ("retry-after: 1",),
)
HEADER_TIMEOUT = _problem(
    408,
    "header-timeout",
    "Request head too slow",
    "the request line and headers did not arrive in time; send them at once",
)


class Guard:
    """What one server's connections share: the limits, and who may be closed to make room."""

    def __init__(self, cap: int, ceiling: int, header_timeout: float) -> None:
        self.cap, self.ceiling, self.header_timeout = cap, ceiling, header_timeout
        self.crowded = cap * 3 // 4
        # Connections that may be closed to make room, oldest first, with when they became so:
        # those doing nothing (silent since accepted, or idle between requests)...
        self.quiet: OrderedDict[GuardedProtocol, float] = OrderedDict()
        # ...and those that sent part of a request head and not the rest yet.
        self.heads: OrderedDict[GuardedProtocol, float] = OrderedDict()
        # Closed here but not gone yet (their descriptors go on the loop's next turn).
        self.closing: set[GuardedProtocol] = set()
        self.closed: Counter[str] = Counter()
        self._logged = time.monotonic()

    def make_room(self, connections: int, now: float) -> None:
        """Closes connections doing nothing useful, oldest first, until ``connections`` (open
        now) minus those closing is within the cap, or none is left to close."""
        while connections - len(self.closing) > self.cap:
            victim = None
            if self.quiet:
                oldest, since = next(iter(self.quiet.items()))
                if now - since >= QUIET_GRACE_SECONDS:
                    victim = oldest
            if victim is None and self.heads:
                victim = next(iter(self.heads))
            if victim is None:
                return
            victim.evict()

    def count(self, reason: str, now: float) -> None:
        """Counts a connection closed by the guard; says so in the log now and then."""
        self.closed[reason] += 1
        if now - self._logged >= LOG_EVERY_SECONDS:
            said = ", ".join(f"{n} {why}" for why, n in sorted(self.closed.items()))
            log.warning(
                "closed connections in the last %.0f s: %s (cap %d)", now - self._logged, said, self.cap
            )
            self.closed.clear()
            self._logged = now


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard's deadline and cap (see the module)."""

    guard: Guard  # set on the subclass ``protocol_class`` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    # -- connection events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard, now = self.guard, time.monotonic()
        guard.make_room(len(self.connections), now)
        if len(self.connections) - len(guard.closing) > guard.ceiling:
            self._close("refused with 503", OVER_CAPACITY)
            return
        guard.quiet[self] = now
        self._head_timer = self.loop.call_later(guard.header_timeout, self._head_overdue)

    def data_received(self, data: bytes) -> None:
        if self in self.guard.closing:
            return  # answered and closing: what the client still sends is dropped
        super().data_received(data)
        if self in self.guard.heads:  # a head still incomplete: the first to go when crowded
            self.guard.make_room(len(self.connections), time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.guard.closing.discard(self)
        super().connection_lost(exc)

    # -- parser events ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request: the connection is busy with the one before
        self.guard.quiet.pop(self, None)
        self.guard.heads[self] = time.monotonic()
        if self._head_timer is None:  # a kept-alive connection: its deadline runs from now
            self._head_timer = self.loop.call_later(self.guard.header_timeout, self._head_overdue)

    def on_headers_complete(self) -> None:
        self._forget()
        super().on_headers_complete()
        if self.cycle is not None and len(self.connections) >= self.guard.crowded:
            self.cycle.keep_alive = False  # answered with Connection: close

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # kept alive, idle until the next request
            self.guard.quiet[self] = time.monotonic()

    # -- closing ------------------------------------------------------------------------------

    def evict(self) -> None:
        """Closed to make room: a 503 if part of a head came, else a plain close."""
        self._close("closed to make room", OVER_CAPACITY if self in self.guard.heads else None)

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined head stalled: close after this answer
            return
        self._close("past the header deadline", HEADER_TIMEOUT if self in self.guard.heads else None)

    def _close(self, reason: str, answer: bytes | None) -> None:
        self._forget()
        self.guard.closing.add(self)
        self.guard.count(reason, time.monotonic())
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()

    def _forget(self) -> None:
        """No longer waiting for a head, nor idle: nothing to close it for."""
        self.guard.quiet.pop(self, None)
        self.guard.heads.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def protocol_class(settings: Settings, fd_limit: int) -> type[GuardedProtocol]:
    """The HTTP protocol class for uvicorn's ``http=``, with one guard for the server."""
    cap, ceiling = connection_caps(fd_limit, settings.connection_limit)
    log.info(
        "connections: at most %d held (descriptor limit %d), request head within %g s",
        cap,
        fd_limit,
        settings.header_timeout_seconds,
    )
    guard = Guard(cap, ceiling, settings.header_timeout_seconds)
    return type("GuardedHttpProtocol", (GuardedProtocol,), {"guard": guard})
