"""daemon.ops.sdnotify against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid

import pytest

from daemon.ops.sdnotify import SystemdNotifier

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sd_notify is Linux-only")


@pytest.fixture
def listener(tmp_path):
    """A datagram socket bound in tmp_path, like systemd's notify socket."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "tmp_path too long for an AF_UNIX address"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


@pytest.fixture
def make():
    """SystemdNotifier(...), closed after the test."""
    made = []

    def _make(*args):
        made.append(SystemdNotifier(*args))
        return made[-1]
    yield _make
    for notifier in made:
        notifier.close()


def drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out


def test_notify_sends_one_datagram_of_states(listener, make):
    path, sock = listener
    notifier = make({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.notify("READY=1", "STATUS=consuming")
    assert sock.recv(4096) == b"READY=1\nSTATUS=consuming"
    notifier.notify("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_abstract_socket(make):
    name = f"coderd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = make({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_reads_os_environ_by_default(listener, monkeypatch, make):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    make().notify("STATUS=hello")
    assert sock.recv(4096) == b"STATUS=hello"


def test_disabled_notifier_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (SystemdNotifier({}), SystemdNotifier(),
                     SystemdNotifier({"NOTIFY_SOCKET": "relative/path"})):
        assert not notifier.enabled
        notifier.notify("READY=1")  # nothing to send to, nothing raised


def test_notify_never_raises_when_nobody_listens(tmp_path, make):
    notifier = make({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    notifier.notify("READY=1")
    notifier.notify("WATCHDOG=1")


def test_watchdog_interval():
    pid = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 30.0
    assert SystemdNotifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": pid}).watchdog_interval == 0.2
    assert SystemdNotifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert SystemdNotifier({}).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


async def test_watchdog_pings_at_half_the_interval(listener, make):
    path, sock = listener
    notifier = make({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                                "WATCHDOG_PID": str(os.getpid())})
    task = asyncio.create_task(notifier.watchdog())
    await asyncio.sleep(0.35)
    assert not task.done()  # it runs until cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = drain(sock)
    assert len(pings) >= 2
    assert set(pings) == {b"WATCHDOG=1"}


async def test_a_stuck_loop_stops_the_pings(listener, make):
    path, sock = listener
    notifier = make({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(notifier.watchdog())
    await asyncio.sleep(0)  # first ping
    time.sleep(0.35)  # the loop is blocked: no ping can be sent
    assert len(drain(sock)) <= 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("environ", [
    {},  # not under systemd
    {"WATCHDOG_USEC": "200000"},  # no socket to ping
    {"NOTIFY_SOCKET": "/nonexistent/notify.sock"},  # no WatchdogSec=
    {"NOTIFY_SOCKET": "/nonexistent/notify.sock", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},
])
async def test_watchdog_returns_at_once_without_a_watchdog(environ):
    await asyncio.wait_for(SystemdNotifier(environ).watchdog(), timeout=1)
