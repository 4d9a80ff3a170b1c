"""The listener on http_listen against slow and numerous clients (daemon/ops/listener.py,
GuardedListener): a request's headers have REQUEST_TIMEOUT, an idle keep-alive connection
KEEPALIVE_TIMEOUT, a handler RESPONSE_TIMEOUT; at most MAX_CONNECTIONS are open, the one
waiting longest for its request giving way to a new one; /healthz answers and coderd keeps
coding (its own outgoing connections) throughout; what it closes is logged a few times,
not once per connection.

The reproduction this guards against: 300 clients sending a byte every 10 s were all held
open; under a low file-descriptor limit /healthz went unanswered, coding calls failed
with ClientConnectorError and asyncio logged 188,000 "out of system resource" lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import quiet_config
from harness import ROOT, DaemonProcess, daemon_env
from test_emulator_cli import free_port
from test_supervision import daemon_in_process

from daemon.emulator import EmulatorServer, ThreadedEmulatorServer
from daemon.ops import listener as limits
from daemon.ops.endpoints import OperatorEndpoints
from daemon.ops.listener import OVER_LIMIT, SLOW_REQUEST, SLOW_RESPONSE

RECORD = {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"


async def slow_client(port: int, interval: float, give_up: float) -> float | None:
    """Send HEAD a byte every `interval` s; seconds until the server closed the connection,
    or None if it was still open after `give_up` s. An answer is a failure (the request
    was never complete)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = loop.time()
    try:
        for i in range(len(HEAD)):
            writer.write(HEAD[i:i + 1])
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(1024), interval)
                assert data == b"", f"answered an incomplete request: {data[:80]!r}"
                return loop.time() - opened
            if loop.time() - opened > give_up:
                return None
    except ConnectionError:
        return loop.time() - opened
    finally:
        writer.close()
    raise AssertionError("the whole request went out: interval too short for this test")


async def probe(url: str) -> float:
    """Seconds for a GET on a new connection (as Docker's or a load balancer's probe)."""
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=2)) as session, session.get(url) as response:
        await response.read()
        assert response.status == 200
    return time.monotonic() - started


@pytest.fixture
def short_limits(monkeypatch):
    """Smaller deadlines, so that tests wait seconds, not minutes."""
    monkeypatch.setattr(limits, "REQUEST_TIMEOUT", 1.5)
    monkeypatch.setattr(limits, "KEEPALIVE_TIMEOUT", 1.0)
    monkeypatch.setattr(limits, "RESPONSE_TIMEOUT", 1.0)


@contextlib.asynccontextmanager
async def endpoints_alone():
    """OperatorEndpoints with no daemon behind it: /healthz needs none."""
    served = OperatorEndpoints("127.0.0.1", 0, view=None)  # type: ignore[arg-type]
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


# --- the whole daemon, in-process ---------------------------------------------------------

async def test_slow_clients_are_closed_while_healthz_answers_and_coding_goes_on(broker, tmp_path, monkeypatch,
                                                                                quiet_logs):
    monkeypatch.setattr(limits, "REQUEST_TIMEOUT", 2.0)
    async with EmulatorServer(quiet_config()) as api, daemon_in_process(broker, tmp_path, api) as (daemon, base):
        listener = daemon.endpoints.listener
        port = daemon.endpoints.port
        clients = [asyncio.create_task(slow_client(port, interval=1.0, give_up=10)) for _ in range(200)]
        await asyncio.sleep(0.2)  # all connected
        # Meanwhile: /healthz on new connections, and coding through the broker and the emulator
        # (a token fetch and coding calls: coderd's own outgoing connections).
        for i in range(3):
            await broker.publish({"topic": "anzsco", "record": {"recordId": f"r{i}", **RECORD}},
                                 correlation_id=f"during{i}")
        latencies, most_open = [], 0
        while not all(client.done() for client in clients):
            latencies.append(await probe(f"{base}/healthz"))
            most_open = max(most_open, len(listener.open))
            await asyncio.sleep(0.1)
        lifetimes = [client.result() for client in clients]
        replies = await broker.answered({f"during{i}" for i in range(3)}, timeout=30)
        closed = dict(listener.closed_by_reason)
    assert None not in lifetimes, "a slow client was still open after 10 s"
    assert max(lifetimes) < 2.0 + 1.0, max(lifetimes)  # REQUEST_TIMEOUT, and a little
    # Those beyond MAX_CONNECTIONS gave way at once (and a few more, for the probes).
    assert sorted(lifetimes)[200 - limits.MAX_CONNECTIONS - 1] < 0.5
    assert len(latencies) >= 10 and max(latencies) < 0.5, latencies
    assert most_open <= limits.MAX_CONNECTIONS
    assert closed[OVER_LIMIT] >= 200 - limits.MAX_CONNECTIONS and closed[SLOW_REQUEST] >= 1
    assert all(reply["status"] == "completed" for reply in replies.values()), replies
    said = [json.loads(line) for line in quiet_logs.getvalue().splitlines()]
    about_http = [event for event in said if event.get("logger", "").startswith(("coderd.http", "aiohttp", "asyncio"))]
    # Per reason, not per connection: the first closing, then (here, as the daemon stops)
    # how many more there were.
    assert len(about_http) <= 4, about_http
    assert {event["reason"] for event in about_http} <= {OVER_LIMIT, SLOW_REQUEST}
    for reason in (OVER_LIMIT, SLOW_REQUEST):
        assert sum(event["count"] for event in about_http if event["reason"] == reason) == closed[reason]


# --- coderd in its own process, with few file descriptors ---------------------------------

FD_LIMIT = 256


class LimitedDaemon(DaemonProcess):
    """`coderd run` with RLIMIT_NOFILE lowered to FD_LIMIT."""

    async def start(self) -> LimitedDaemon:
        def lower() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", cwd=str(ROOT), env={**os.environ, **self.env},
                stdout=log, stderr=log, preexec_fn=lower)
        return self

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


async def slowloris(port: int, interval: float, closed: list[float]) -> None:
    """A slow client that, when closed, connects again at its next tick (as slowloris tools
    do), until cancelled. Notes how long each connection lasted."""
    while True:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            lasted = await slow_client(port, interval, give_up=60)
            if lasted is not None:
                closed.append(lasted)
        await asyncio.sleep(interval - (time.monotonic() - started) % interval)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
async def test_with_few_file_descriptors_more_slow_clients_than_the_limit_cost_nothing(broker, tmp_path):
    """coderd's own limits (REQUEST_TIMEOUT 5 s, MAX_CONNECTIONS), in a process allowed
    FD_LIMIT descriptors; 400 slow clients, more than either."""
    port = free_port()
    async with ThreadedEmulatorServer(quiet_config(requests_per_second=20)) as api:
        env = daemon_env(api.url, broker, tmp_path / "state", http_listen=f"127.0.0.1:{port}", requests_per_second=20)
        daemon = await LimitedDaemon(env, tmp_path / "coderd.log").start()
        try:
            await daemon.wait_for_event("consuming")
            quiet_fds = daemon.open_fds()
            log_before = daemon.log_path.stat().st_size
            closed: list[float] = []
            clients = [asyncio.create_task(slowloris(port, 1.0, closed)) for _ in range(400)]
            published, latencies, most_fds = set(), [], 0
            began = time.monotonic()
            while time.monotonic() - began < limits.REQUEST_TIMEOUT + 2.5:  # past the first timeouts
                published.add(cid := f"flood{len(published)}")
                await broker.publish({"topic": "anzsco", "record": {"recordId": cid, **RECORD}}, correlation_id=cid)
                latencies.append(await probe(f"http://127.0.0.1:{port}/healthz"))
                most_fds = max(most_fds, daemon.open_fds())
                await asyncio.sleep(0.25)
            replies = await broker.answered(published, timeout=30)
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            assert await daemon.terminate() == 0
        finally:
            await daemon.kill()
    lines = daemon.log_path.read_bytes()[log_before:].splitlines()
    events = [json.loads(line) for line in lines]
    noise = [e for e in events if e.get("level") in ("warning", "error", "critical")
             or e.get("logger", "").startswith(("asyncio", "aiohttp", "coderd.http"))]
    assert all(reply["status"] == "completed" for reply in replies.values()), replies
    assert len(latencies) >= 20 and max(latencies) < 1.0, latencies
    assert len(closed) >= 400 and max(closed) < limits.REQUEST_TIMEOUT + 1  # none held for long
    # The listener's descriptors stay bounded whatever comes; far from the limit.
    assert most_fds <= quiet_fds + limits.MAX_CONNECTIONS + 2 * limits.ACCEPT_BATCH < FD_LIMIT, \
        (quiet_fds, most_fds)
    assert not any("out of system resource" in str(e.get("event")) for e in events)
    assert len(noise) <= 5, noise  # a handful: http_connections_closed once per reason
    assert sum(map(len, lines)) < 20_000


# --- the deadlines and the limit, on the endpoints alone ----------------------------------

async def raw_connection(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it does not
    close within `seconds`."""
    received = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionError:
            pass
    return received


async def test_a_request_whose_headers_do_not_come_in_time_is_closed_unanswered(short_limits):
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        writer.write(HEAD[:20])  # part of the request line, then nothing
        started = time.monotonic()
        assert await closed_within(reader, 3) == b""
        assert 1.4 <= time.monotonic() - started < 2.5
        writer.close()
        assert served.listener.closed_by_reason[SLOW_REQUEST] == 1


async def test_a_connection_that_sends_nothing_is_closed_too(short_limits):
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        assert await closed_within(reader, 3) == b""
        writer.close()
        assert served.listener.closed_by_reason[SLOW_REQUEST] == 1


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(short_limits):
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        for _ in range(2):  # the deadline starts again after each response
            writer.write(HEAD)
            response = await reader.readuntil(b'"alive"}')
            assert response.startswith(b"HTTP/1.1 200"), response
            await asyncio.sleep(0.6)
        started = time.monotonic()
        assert await closed_within(reader, 3) == b""
        assert 0.3 <= time.monotonic() - started < 1.5  # KEEPALIVE_TIMEOUT after the last response
        writer.close()
        assert served.listener.closed_by_reason == {limits.KEEPALIVE_IDLE: 1}


async def test_a_next_request_sent_slowly_on_a_kept_alive_connection_is_closed(short_limits):
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        writer.write(HEAD)
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        for byte in HEAD[:12]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        await closed_within(reader, 3)
        writer.close()
        assert served.listener.closed_by_reason[SLOW_REQUEST] == 1


async def test_a_body_sent_slowly_is_not_waited_for(short_limits):
    """The endpoints are GETs and read no body: a body trickling in is bounded by the
    deadline that follows the response."""
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        writer.write(HEAD.replace(b"\r\n\r\n", b"\r\nContent-Length: 100000\r\n\r\n"))
        started = time.monotonic()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")

        async def trickle():
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x")
                    await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        await closed_within(reader, 3)
        trickling.cancel()
        assert time.monotonic() - started < 2.0
        writer.close()


async def test_a_handler_that_takes_too_long_loses_its_connection(short_limits, monkeypatch):
    release = asyncio.Event()

    async def stuck(self, request):
        await release.wait()
        return aiohttp.web.json_response({"status": "late"})

    monkeypatch.setattr(OperatorEndpoints, "healthz", stuck)
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        writer.write(HEAD)
        started = time.monotonic()
        assert await closed_within(reader, 3) == b""
        assert time.monotonic() - started < 1.8
        writer.close()
        release.set()  # the handler ends after its connection: nothing to answer, nothing breaks
        await asyncio.sleep(0.05)
        assert served.listener.closed_by_reason[SLOW_RESPONSE] == 1
        assert await probe(f"http://127.0.0.1:{served.port}/healthz") < 0.5


async def test_over_the_limit_the_connection_waiting_longest_gives_way(monkeypatch):
    monkeypatch.setattr(limits, "MAX_CONNECTIONS", 4)
    async with endpoints_alone() as served:
        idle = [await raw_connection(served.port) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert len(served.listener.open) == 4
        assert await probe(f"http://127.0.0.1:{served.port}/healthz") < 0.5  # the limit is reached, yet
        assert await closed_within(idle[0][0], 1) == b""  # the oldest gave way
        for _, writer in idle:
            writer.close()
        assert served.listener.closed_by_reason[OVER_LIMIT] == 1


async def test_over_the_limit_with_every_connection_busy_the_new_one_is_closed_at_once(monkeypatch):
    monkeypatch.setattr(limits, "MAX_CONNECTIONS", 3)
    release = asyncio.Event()

    async def held(self, request):
        await release.wait()
        return aiohttp.web.json_response({"status": "alive"})

    monkeypatch.setattr(OperatorEndpoints, "healthz", held)
    async with endpoints_alone() as served:
        busy = [await raw_connection(served.port) for _ in range(3)]
        for _, writer in busy:
            writer.write(HEAD)
        while sum(c.busy for c in served.listener.open) < 3:
            await asyncio.sleep(0.01)
        reader, writer = await raw_connection(served.port)
        writer.write(HEAD)
        assert await closed_within(reader, 1) == b""
        writer.close()
        release.set()
        for reader, writer in busy:  # the busy ones are answered
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()
        assert served.listener.closed_by_reason[OVER_LIMIT] == 1


async def test_closing_is_logged_once_per_reason_then_counted(short_limits, monkeypatch, quiet_logs):
    monkeypatch.setattr(limits, "LOG_INTERVAL", 0.5)
    async with endpoints_alone() as served:
        connections = [await raw_connection(served.port) for _ in range(20)]
        for reader, writer in connections:
            await closed_within(reader, 3)
            writer.close()
        await asyncio.sleep(0.7)  # the interval ends: what was held back is reported
    said = [json.loads(line) for line in quiet_logs.getvalue().splitlines()]
    closing = [e for e in said if e["event"] == "http_connections_closed"]
    assert [e["count"] for e in closing] == [1, 19], closing
    assert {e["reason"] for e in closing} == {SLOW_REQUEST}


async def test_stopping_closes_what_is_open(short_limits):
    async with endpoints_alone() as served:
        reader, writer = await raw_connection(served.port)
        await asyncio.sleep(0.05)
    assert await closed_within(reader, 1) == b""
    writer.close()
    with pytest.raises(OSError):
        await raw_connection(served.port)


def test_the_limits_leave_room_under_the_units_file_descriptor_limit():
    """The unit's LimitNOFILE is far above what the listener can hold."""
    from test_packaging import UNIT, unit_entries

    limit = dict(unit_entries(UNIT.read_text())["Service"])["LimitNOFILE"]
    assert limits.MAX_CONNECTIONS + 2 * limits.ACCEPT_BATCH < int(limit.split(":")[0]) // 16
