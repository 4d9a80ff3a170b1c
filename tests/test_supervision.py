"""The whole daemon in-process, against the real broker and the emulator over HTTP: each
supervised task killed by an injected exception is restarted, /readyz says 503 meanwhile,
the crash is counted, and no request is left hanging. And the outage that used to stop
the real-time worker for good, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import aiohttp
import pytest
from conftest import quiet_config
from harness import AMQP_URL
from test_endpoints import samples

from daemon.backoff import Backoff
from daemon.batch.manager import BatchManager
from daemon.broker.intake import Intake
from daemon.broker.lease import Lease
from daemon.config import Settings
from daemon.emulator import EmulatorServer
from daemon.ops.sdnotify import SystemdNotifier
from daemon.realtime import calls as calls_module
from daemon.realtime.worker import SyncWorker
from daemon.replica.role import ActiveRole
from daemon.replica.sharing import StreamSharing
from daemon.service import Daemon
from daemon.statedir import StateDir

RECORD = {"recordId": "r1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"}


@contextlib.asynccontextmanager
async def daemon_in_process(broker, tmp_path, emulator, **overrides):
    settings = Settings.model_validate({
        "amqp_url": AMQP_URL, "api_url": emulator.url, "auth_url": emulator.url, "client_id": "client1",
        "client_secret": "secret123", "request_queue": broker.request_queue,
        "default_reply_queue": broker.default_reply_queue, "state_dir": tmp_path / "state",
        "inbox_dir": tmp_path / "inbox", "outbox_dir": tmp_path / "outbox", "http_listen": "127.0.0.1:0",
        "requests_per_second": 20.0, "quota_burst": 1.0, **overrides})
    daemon, stop = Daemon(settings), asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({running, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert daemon.ready.is_set(), running.exception() if running.done() else "not ready within 30 s"
    try:
        yield daemon, f"http://127.0.0.1:{daemon.endpoints.port}"
    finally:
        stop.set()
        assert await asyncio.wait_for(running, 60) == 0


def crash_first(monkeypatch, cls, name: str, times: int) -> list:
    """Make `cls.name` raise on its first `times` runs, then behave."""
    real, crashed = getattr(cls, name), []

    def injected(self, *args, **kwargs):
        if len(crashed) < times:
            crashed.append(name)
            raise RuntimeError(f"injected crash of {name}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, injected)
    return crashed


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A systemd notify socket, so the daemon runs its watchdog task."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


@pytest.mark.parametrize("task, cls, method", [
    ("sync-worker", SyncWorker, "run"),
    ("batch-manager", BatchManager, "run"),
    ("quota-pause", Intake, "follow_quota"),
    ("sd-watchdog", SystemdNotifier, "watchdog"),
    ("state-dir-pause", Intake, "follow_state_dir"),
    ("state-dir-probe", StateDir, "watch"),
    ("active-role", ActiveRole, "run"),
    ("quota-sharing", StreamSharing, "_share_quota"),
    ("lease-renewal", Lease, "_renew"),
])
async def test_a_killed_task_is_restarted_and_reported_meanwhile(broker, tmp_path, monkeypatch, notify_socket,
                                                                 task, cls, method):
    crashed = crash_first(monkeypatch, cls, method, times=2)
    async with EmulatorServer(quiet_config()) as api, aiohttp.ClientSession() as session, \
            daemon_in_process(broker, tmp_path, api) as (daemon, base):
        await broker.publish({"topic": "anzsco", "record": RECORD}, correlation_id="during")
        seen_503 = None
        for _ in range(400):  # the two restarts take 1.5-3 s
            async with session.get(f"{base}/readyz") as response:
                state = await response.json()
            if response.status == 503 and seen_503 is None:
                seen_503 = state["reasons"]
            if response.status == 200 and seen_503 is not None and len(crashed) == 2:
                break
            await asyncio.sleep(0.05)
        assert response.status == 200, state
        async with session.get(f"{base}/metrics") as response:
            counted = samples(await response.text())[("coderd_task_crashes_total", (("task", task),))]
        replies = await broker.answered({"during"}, timeout=30)
    assert any(f"task {task} is down" in reason and "injected crash" in reason for reason in seen_503), seen_503
    assert counted >= 2
    assert replies["during"]["status"] == "completed"


async def test_at_shutdown_what_outlives_the_grace_period_goes_back_to_the_queue(broker, tmp_path, monkeypatch):
    from daemon.broker import intake as intake_module

    monkeypatch.setattr(intake_module, "SHUTDOWN_GRACE", 0.5)
    async with EmulatorServer(quiet_config()) as api:
        async with daemon_in_process(broker, tmp_path, api) as (daemon, _):
            await broker.publish({"topic": "anzsco", "record": RECORD}, correlation_id="answered")
            await broker.answered({"answered"}, timeout=30)
            api.faults.stall, api.faults.stall_seconds = 100, 60  # what is in flight now cannot finish in time
            for i in range(5):  # texts of their own: the result cache would answer RECORD at once
                await broker.publish({"topic": "anzsco", "record": {**RECORD, "occp_text": f"late fitter {i}"}},
                                     correlation_id=f"late{i}")
            while len(daemon.intake.tasks) < 5:
                await asyncio.sleep(0.02)
        assert await broker.message_count(broker.request_queue) == 5  # handed back, whole
        api.faults.stall = 0
        async with daemon_in_process(broker, tmp_path, api):
            replies = await broker.answered({f"late{i}" for i in range(5)}, timeout=30)
    assert all(r["status"] == "completed" for r in replies.values())


async def test_after_an_outage_exhausts_retries_later_requests_of_any_key_complete(broker, tmp_path, monkeypatch):
    """The reproduction: emulator failing every call, a request with numberOfSuggestions 2
    (answered upstream_error after its retries), faults off, then a default request."""
    monkeypatch.setattr(calls_module, "RETRY_BACKOFF", Backoff(base=0.01, cap=0.05))
    async with EmulatorServer(quiet_config()) as api, daemon_in_process(broker, tmp_path, api):
        api.faults.error_rate = 1.0
        await broker.publish({"topic": "anzsco", "numberOfSuggestions": 2, "record": RECORD}, correlation_id="outage")
        first = await broker.answered({"outage"}, timeout=30)
        api.faults.error_rate = 0.0
        await broker.publish({"topic": "anzsco", "record": RECORD}, correlation_id="after")
        await broker.publish({"topic": "osca", "record": RECORD}, correlation_id="other-topic")
        later = await broker.answered({"after", "other-topic"}, timeout=30)
    assert first["outage"]["error"]["code"] == "upstream_error"
    assert later["after"]["status"] == later["other-topic"]["status"] == "completed"
    assert json.dumps(later)  # plain JSON replies
