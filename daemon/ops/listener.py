"""The listener behind http_listen (coderd's own, in place of aiohttp's TCPSite).

aiohttp's server has no limit on connections and no deadline for a request's headers: 300
clients sending a byte every 10 s were all held open, took the file descriptors coderd
needs for its own connections (token, coding calls, broker) and made asyncio log
"socket.accept() out of system resource" by the hundred thousand. GuardedListener makes
the same loop.create_server() call, and bounds connections and the time each may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable

from aiohttp import web
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from ..logs import RepeatThrottle, get_logger
from . import metrics

log = get_logger("coderd.http")

# --- the listener's limits -------------------------------------------------------------
# Probes and scrapes send a small GET at once and are answered in milliseconds; these
# limits are far above what they need and far below what would hurt coderd.
MAX_CONNECTIONS = 64  # open at once; beyond it the oldest waiting one is closed (see GuardedListener)
REQUEST_TIMEOUT = 5.0  # seconds from connecting to a complete request line and headers
KEEPALIVE_TIMEOUT = 5.0  # seconds from a response to the next complete request (idle keep-alive)
RESPONSE_TIMEOUT = 30.0  # seconds a request may spend in its handler (/readyz asks the broker)
ACCEPT_BATCH = 16  # connections asyncio accepts per turn of the event loop (see start())
LISTEN_BACKLOG = 1024  # the kernel's queue of connections not yet accepted (costs coderd nothing)
LOG_INTERVAL = 60.0  # seconds: each reason for closing is logged at most once per interval

# Why GuardedListener closed a connection (the label of coderd_http_connections_closed_total).
SLOW_REQUEST = "slow_request"  # no complete request REQUEST_TIMEOUT after connecting, or only
#                                part of the next one KEEPALIVE_TIMEOUT after a response
KEEPALIVE_IDLE = "keepalive_idle"  # nothing sent KEEPALIVE_TIMEOUT after a response: normal
SLOW_RESPONSE = "slow_response"  # RESPONSE_TIMEOUT spent in a handler
OVER_LIMIT = "over_limit"  # MAX_CONNECTIONS open: closed to make room for a new one, or refused

http_connections = Gauge("coderd_http_connections", "Connections open on http_listen",
                         registry=metrics.REGISTRY)
http_connections_closed = MetricCounter(
    "coderd_http_connections_closed", "Connections on http_listen closed by coderd, by reason",
    ["reason"], registry=metrics.REGISTRY)


class _Connection(asyncio.Protocol):
    """One accepted connection: a protocol wrapped around aiohttp's (its RequestHandler),
    to which every call is handed on. It adds the deadline aiohttp lacks: at any time the
    connection is either waiting for a request (REQUEST_TIMEOUT from connecting,
    KEEPALIVE_TIMEOUT from the last response) or inside a handler (RESPONSE_TIMEOUT), and
    it is aborted when the deadline passes. Only asyncio's Protocol interface is used, so
    nothing here depends on aiohttp's internals."""

    def __init__(self, listener: GuardedListener) -> None:
        self.listener = listener
        self.inner: asyncio.Protocol | None = None  # aiohttp's, once admitted
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests inside a handler (aiohttp runs one at a time per connection)
        self.answered = 0  # responses given
        self.received = False  # bytes since connecting or since the last response
        self.head_seen = False  # ... and among them the blank line that ends a request's headers
        self._tail = b""  # the last bytes received, for a blank line split across reads
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None

    # asyncio's side: everything is handed on to aiohttp's protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.listener.admit(self):
            self.inner = self.listener.make_protocol()
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if not self.head_seen:
            # Not a parser (aiohttp parses): only whether a whole request head has come, so
            # that a probe whose handler has not started yet is not the one made room from.
            seen = self._tail + data
            self.head_seen = b"\r\n\r\n" in seen or b"\n\n" in seen
            self._tail = seen[-3:]
        if self.inner is not None and not self.closed:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    # the deadline
    def arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.expire)

    def expire(self) -> None:
        self.timer = None
        if self.busy:
            reason = SLOW_RESPONSE
        elif self.answered and not self.received:
            reason = KEEPALIVE_IDLE
        else:
            reason = SLOW_REQUEST
        self.listener.close(self, reason)


class GuardedListener:
    """The listening socket of the operator endpoints, with the limits aiohttp's server
    lacks (aiohttp 3.9-3.14 has a keep-alive timeout, but nothing bounds the time a
    client may take to send its request line and headers):

    - a deadline per connection (_Connection): REQUEST_TIMEOUT to send a request line
      and headers, KEEPALIVE_TIMEOUT idle after a response (a request body, which no
      endpoint reads, is discarded by aiohttp after the response, within that deadline),
      RESPONSE_TIMEOUT inside a handler;
    - at most MAX_CONNECTIONS open: a new connection beyond it takes the place of the
      one that has waited longest for its request and has not sent a whole request head
      (slow clients are the oldest waiters, so a probe that sends its request at once
      still gets in while they hold every slot); if there is no such connection, the
      new one is closed at once. (A local client opening thousands of connections a
      second can still crowd probes out; the limit keeps coderd's descriptors safe.)
      With ACCEPT_BATCH, the listener never holds more than about
      MAX_CONNECTIONS + 2 * ACCEPT_BATCH file descriptors, however many clients come;
    - closing is counted in coderd_http_connections_closed_total{reason} and, but for
      keep-alive idling (normal), logged at most once per LOG_INTERVAL per reason with a
      count (`http_connections_closed`).

    How it hooks into aiohttp: AppRunner's `server` is the protocol factory that
    aiohttp's own TCPSite hands to loop.create_server(); here each protocol it makes is
    wrapped in a _Connection, and `middleware` (first in the application) tells the
    connection when a request enters and leaves its handler. Both are public aiohttp API,
    unchanged from 3.9 to 3.14; everything else is asyncio's Protocol interface.
    """

    def __init__(self, make_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.make_protocol = make_protocol
        # Read here rather than bound as defaults, so that a test can lower them.
        self.max_connections = MAX_CONNECTIONS
        self.request_timeout, self.keepalive_timeout = REQUEST_TIMEOUT, KEEPALIVE_TIMEOUT
        self.response_timeout = RESPONSE_TIMEOUT
        self.open: dict[_Connection, None] = {}  # admitted and not closed, oldest first
        self.waiting: dict[_Connection, None] = {}  # of those, not inside a handler: longest waiting first
        self.by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self.closed_by_reason: Counter[str] = Counter()
        self._throttle = RepeatThrottle(self._report, LOG_INTERVAL)
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str | None, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port, backlog=ACCEPT_BATCH)
        # asyncio uses `backlog` for two things: listen()'s queue in the kernel, and how many
        # connections it accepts per turn of the loop. We want a long queue (a burst waits
        # in the kernel, costing coderd no descriptor, instead of being dropped and retried
        # a second later, probes included) and few accepts per turn (each accepted
        # connection holds a descriptor until it is admitted or closed, a turn later).
        # asyncio called listen() once, above; calling it again (on a duplicate of the
        # descriptor: asyncio's socket object does not offer listen()) only resizes the
        # queue. Should the platform refuse, the queue stays ACCEPT_BATCH long.
        for listening in self.server.sockets:
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(listening.fileno())) as same_socket:
                same_socket.listen(LISTEN_BACKLOG)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()

    def abort_all(self) -> None:
        """Whatever aiohttp's shutdown left open; and report what the log held back."""
        for connection in list(self.open):
            self.forget(connection)
            connection.transport.abort()
        self._throttle.close()

    def admit(self, connection: _Connection) -> bool:
        if len(self.open) >= self.max_connections:
            oldest = next((waiting for waiting in self.waiting if not waiting.head_seen), None)
            if oldest is None:  # every connection is inside a handler (or about to be): refuse this one
                connection.closed = True
                connection.transport.abort()
                self._count(OVER_LIMIT)
                return False
            self.close(oldest, OVER_LIMIT)
        self.open[connection] = None
        self.waiting[connection] = None
        self.by_transport[connection.transport] = connection
        connection.arm(self.request_timeout)
        return True

    def close(self, connection: _Connection, reason: str) -> None:
        """Abort: the descriptor is freed at once, without waiting to flush what a slow
        reader has not read."""
        if connection.closed:
            return
        self.forget(connection)
        connection.transport.abort()
        self._count(reason)

    def forget(self, connection: _Connection) -> None:
        connection.closed = True
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        self.open.pop(connection, None)
        self.waiting.pop(connection, None)
        self.by_transport.pop(connection.transport, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        connection = self.by_transport.get(request.transport)
        if connection is None or connection.closed:
            return await handler(request)
        connection.busy += 1
        self.waiting.pop(connection, None)
        connection.arm(self.response_timeout)
        try:
            return await handler(request)
        finally:
            # aiohttp writes the response after this returns: KEEPALIVE_TIMEOUT bounds that too.
            connection.busy -= 1
            connection.answered += 1
            if not connection.closed and not connection.busy:
                connection.received = connection.head_seen = False
                connection._tail = b""
                self.waiting[connection] = None
                connection.arm(self.keepalive_timeout)

    def _count(self, reason: str) -> None:
        self.closed_by_reason[reason] += 1
        http_connections_closed.labels(reason).inc()
        if reason != KEEPALIVE_IDLE and self._throttle.admit(reason):
            self._log(reason, 1, None)

    def _report(self, reason: str, _sample: str, count: int, seconds: float) -> None:
        self._log(reason, count, seconds)

    def _log(self, reason: str, count: int, seconds: float | None) -> None:
        notes = {
            SLOW_REQUEST: f"no complete request within {self.request_timeout:g} s",
            SLOW_RESPONSE: f"a handler took more than {self.response_timeout:g} s",
            OVER_LIMIT: f"{self.max_connections} connections were open: the one waiting longest "
                        "for its request was closed (or, all busy, the new one)",
        }
        log.warning("http_connections_closed", reason=reason, count=count,
                    **({"seconds": round(seconds, 1)} if seconds is not None else {}),
                    open=len(self.open), limit=self.max_connections, note=notes.get(reason, reason))
