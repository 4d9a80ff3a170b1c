"""The core in-process: the dispatcher, the workers and the shared services, driven with
fake messages and a fake publisher (no broker), against the emulator over loopback HTTP.
In the spirit of FastStream's TestRabbitBroker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from daemon.api.client import call_tracing
from daemon.broker.delivery import process
from daemon.config import Settings
from daemon.ops.supervisor import Supervisor
from daemon.request.incoming import AckPolicy
from daemon.service import Core, build_core


class FakeMessage:
    """An incoming message with aio-pika's settle methods; it records how it was settled
    and refuses to be settled twice, as the broker would."""

    def __init__(self, body: bytes | dict, *, correlation_id: str | None = "auto", message_id: str | None = None,
                 reply_to: str | None = "replies", app_id: str | None = None, user_id: str | None = None,
                 headers: dict | None = None, content_type: str = "application/json",
                 content_encoding: str | None = None) -> None:
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.correlation_id = uuid.uuid4().hex if correlation_id == "auto" else correlation_id
        self.message_id, self.reply_to, self.app_id, self.user_id = message_id, reply_to, app_id, user_id
        self.headers, self.content_type, self.content_encoding = headers or {}, content_type, content_encoding
        self.redelivered = False
        self.settled: list[str] = []

    async def ack(self) -> None:
        self._settle("ack")

    async def nack(self, requeue: bool = True) -> None:
        self._settle("nack" if requeue else "nack-drop")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("reject")

    def _settle(self, how: str) -> None:
        if self.settled:
            raise RuntimeError(f"settled twice: {self.settled[0]} then {how}")
        self.settled.append(how)


def _no_constants(name: str):
    raise ValueError(f"{name} in a reply: not strict JSON")


def strict_json(body: bytes):
    return json.loads(body, parse_constant=_no_constants)


@dataclass
class Published:
    reply_to: str | None
    correlation_id: str
    body: dict
    raw: bytes


@dataclass
class FakePublisher:
    """Replies go into `replies`; hand-backs into `returned`. `fail_publishes` makes the
    next N publishes fail as a lost broker would."""

    replies: list[Published] = field(default_factory=list)
    returned: list[tuple[str, FakeMessage]] = field(default_factory=list)
    fail_publishes: int = 0

    async def publish(self, body: bytes, reply_to: str | None, correlation_id: str) -> None:
        if self.fail_publishes > 0:
            self.fail_publishes -= 1
            raise ConnectionError("broker connection lost")
        self.replies.append(Published(reply_to, correlation_id, strict_json(body), body))

    async def return_to_queue(self, message: FakeMessage, queue: str) -> None:
        self.returned.append((queue, message))

    def for_id(self, correlation_id: str) -> list[dict]:
        return [p.body for p in self.replies if p.correlation_id == correlation_id]


def core_settings(emulator_url: str, tmp_path: Path, **overrides) -> Settings:
    values = dict(api_url=emulator_url, auth_url=emulator_url, client_id="client1", client_secret="secret123",
                  state_dir=tmp_path / "state", inbox_dir=tmp_path / "inbox", outbox_dir=tmp_path / "outbox",
                  requests_per_second=50.0, batch_poll_seconds=0.2,
                  quota_burst=1.0)  # quota pacing off unless a test turns it on: it depends on the time of day
    values.update(overrides)
    return Settings.model_validate(values)


@dataclass
class Harness:
    core: Core
    publisher: FakePublisher
    supervisor: Supervisor
    settings: Settings

    async def deliver(self, body: bytes | dict, lane: str = "bulk", **properties) -> FakeMessage:
        """One message through the broker edge's process(): dispatched, then settled."""
        message, task = self.start(body, lane, **properties)
        await task
        return message

    def start(self, body: bytes | dict, lane: str = "bulk", **properties) -> tuple[FakeMessage, asyncio.Task]:
        """Deliver in the background; returns the message and its handler task."""
        message = FakeMessage(body, **properties)
        queue = self.settings.interactive_queue if lane == "interactive" else self.settings.request_queue
        task = asyncio.get_running_loop().create_task(process(
            message, lane=lane, queue=queue, dispatch=self.core.dispatcher.handle, requeuer=self.publisher))
        return message, task

    async def later_reply(self, message: FakeMessage, timeout: float = 30.0) -> dict:
        """The reply for a message acked before its reply (a journaled batch job)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.publisher.for_id(message.correlation_id):
            assert asyncio.get_running_loop().time() < deadline, f"no reply for {message.correlation_id}"
            await asyncio.sleep(0.05)
        return self.reply(message)

    def reply(self, message: FakeMessage) -> dict:
        """The one reply published for `message` (fails if there is not exactly one)."""
        found = self.publisher.for_id(message.correlation_id)
        assert len(found) == 1, f"{len(found)} replies for {message.correlation_id}"
        return found[0]


@contextlib.asynccontextmanager
async def running_core(emulator_url: str, tmp_path: Path, *, wedged_after: float = 120.0, **overrides):
    settings = core_settings(emulator_url, tmp_path, **overrides)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        supervisor = await stack.enter_async_context(Supervisor(wedged_after=wedged_after))
        session = await stack.enter_async_context(aiohttp.ClientSession(trace_configs=[call_tracing()]))
        publisher = FakePublisher()
        core = build_core(settings, "secret123", session, publisher, supervisor)
        for component in core.components:
            await stack.enter_async_context(component)
        yield Harness(core, publisher, supervisor, settings)


__all__ = ["AckPolicy", "FakeMessage", "FakePublisher", "Harness", "core_settings", "running_core"]


class BackgroundCore:
    """The emulator and a running core on an event loop of their own, in a thread, so a
    synchronous test (hypothesis) can drive them: `run(coro)` runs on that loop."""

    def __init__(self, tmp_path: Path, emulator_config, **overrides) -> None:
        import threading

        self.tmp_path, self.emulator_config, self.overrides = tmp_path, emulator_config, overrides
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="background-core", daemon=True)
        self._stack: contextlib.AsyncExitStack | None = None

    def __enter__(self) -> "BackgroundCore":
        from daemon.emulator import EmulatorServer

        self._thread.start()

        async def open_all():
            stack = contextlib.AsyncExitStack()
            self.emulator = await stack.enter_async_context(EmulatorServer(self.emulator_config))
            self.harness = await stack.enter_async_context(
                running_core(self.emulator.url, self.tmp_path, **self.overrides))
            return stack

        self._stack = self.run(open_all())
        return self

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
