"""Running `coderd run` as a real process against the emulator and the local broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import aio_pika

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parent.parent


class RemoteFaults:
    """An emulator process's fault switches, set over its /_emulator/faults endpoint."""

    def __init__(self, url: str) -> None:
        object.__setattr__(self, "_url", url)

    def __setattr__(self, name: str, value) -> None:
        request = urllib.request.Request(f"{self._url}/_emulator/faults", data=json.dumps({name: value}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()


class EmulatorProcess:
    """`coderd emulator` in a process of its own: it stamps requests' arrival on a loop and
    an interpreter that nothing in the test shares, as a real server would."""

    def __init__(self, *, rate: float = 1.0, latency: float = 0.0, processing_seconds: float = 0.0) -> None:
        self.args = ["--rate", str(rate), "--latency", str(latency), "--processing-seconds", str(processing_seconds)]
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "EmulatorProcess":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "emulator", "--port", str(self.port), *self.args,
            cwd=str(ROOT), stdout=asyncio.subprocess.PIPE)
        await asyncio.wait_for(self.process.stdout.readline(), 30)
        self.faults = RemoteFaults(self.url)
        return self

    @property
    def stats(self) -> SimpleNamespace:
        with urllib.request.urlopen(f"{self.url}/_emulator/stats", timeout=10) as response:
            return SimpleNamespace(**json.load(response))

    async def __aexit__(self, *exc) -> None:
        self.process.terminate()
        await self.process.wait()


class DaemonProcess:
    """One `python -m daemon run`, its log kept in a file for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> "DaemonProcess":
        log = open(self.log_path, "ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", cwd=str(ROOT),
            env={**os.environ, **self.env}, stdout=log, stderr=log)
        log.close()
        return self

    def events(self) -> list[dict]:
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"event": "unparsed", "line": line})
        return events

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def wait_for_event(self, name: str | tuple[str, ...], count: int = 1, timeout: float = 30) -> None:
        """Wait until the log holds `count` events called `name` (or any of several names;
        the log is a file: poll it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        names = (name,) if isinstance(name, str) else name
        while sum(e.get("event") in names for e in self.events()) < count:
            if self.process.returncode is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}):\n{self.log_text()[-3000:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {name!r} event within {timeout}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class Broker:
    """The test's own AMQP client: publishes requests, collects replies."""

    def __init__(self, prefix: str, url: str = AMQP_URL) -> None:
        self.prefix = prefix
        self.url = url
        self.request_queue = f"{prefix}.requests"
        self.interactive_queue = f"{prefix}.requests.interactive"  # coderd's default: request_queue + ".interactive"
        self.reply_queue = f"{prefix}.replies"
        self.default_reply_queue = f"{prefix}.default-replies"
        self.connection = None
        self.channel = None

    async def open(self) -> "Broker":
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel()
        await self.channel.declare_queue(self.reply_queue, durable=True)
        return self

    async def publish(self, body, *, correlation_id: str | None = None, reply_to: str | None = "default",
                      message_id: str | None = None, queue: str | None = None, **properties) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.channel.default_exchange.publish(
            aio_pika.Message(payload, correlation_id=correlation_id, message_id=message_id,
                             reply_to=self.reply_queue if reply_to == "default" else reply_to,
                             content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             **properties),
            routing_key=queue or self.request_queue)

    async def replies(self, count: int, *, queue: str | None = None, timeout: float = 60) -> list[tuple[str, dict]]:
        """Collect `count` replies as (correlation_id, body), acking them."""
        got: list[tuple[str, dict]] = []
        await self._collect(queue, timeout, got.append, lambda: len(got) >= count,
                            lambda: f"only {len(got)} of {count} replies within {timeout}s")
        return got

    async def answered(self, expected: set[str], *, timeout: float = 90) -> dict[str, dict]:
        """Collect replies until every expected correlation id has one (duplicates allowed:
        delivery is at-least-once)."""
        seen: dict[str, dict] = {}
        await self._collect(None, timeout, lambda item: seen.__setitem__(*item), lambda: set(seen) >= expected,
                            lambda: f"unanswered: {sorted(expected - set(seen))[:10]}")
        return seen

    async def reply_counts(self, expected: set[str], *, quiet: float = 2.0, timeout: float = 90) -> dict[str, int]:
        """Replies per correlation id, collected until every expected one has come and
        nothing more arrives for `quiet` seconds (duplicates are counted, not dropped)."""
        counts: dict[str, int] = {}
        arrived = asyncio.Event()

        def keep(item) -> None:
            counts[item[0]] = counts.get(item[0], 0) + 1
            arrived.set()

        q = await self.channel.declare_queue(self.reply_queue, durable=True)

        async def take(message):
            async with message.process():
                keep((message.correlation_id, None))

        tag = await q.consume(take)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), quiet)
                except asyncio.TimeoutError:
                    if set(counts) >= expected:
                        return counts
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"unanswered: {sorted(expected - set(counts))[:10]}")
        finally:
            await q.cancel(tag)

    async def _collect(self, queue: str | None, timeout: float, keep, enough, failure) -> None:
        done = asyncio.Event()
        q = await self.channel.declare_queue(queue or self.reply_queue, durable=True, passive=queue is not None)

        async def take(message):
            async with message.process():
                keep((message.correlation_id, json.loads(message.body)))
                if enough():
                    done.set()

        tag = await q.consume(take)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(failure()) from None
        finally:
            await q.cancel(tag)

    async def message_count(self, queue: str) -> int:
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count
        finally:
            await channel.close()

    async def close(self) -> None:
        channel = await self.connection.channel()
        for name in (self.request_queue, f"{self.request_queue}.dead", self.interactive_queue,
                     f"{self.interactive_queue}.dead", self.reply_queue, self.default_reply_queue,
                     f"{self.request_queue}.lease", f"{self.request_queue}.state"):
            try:
                await channel.queue_delete(name)
            except Exception:
                channel = await self.connection.channel()
        await self.connection.close()


def daemon_env(emulator_url: str, broker: Broker, state_dir: Path, **overrides) -> dict[str, str]:
    env = {
        "CODERD_AMQP_URL": AMQP_URL,
        "CODERD_API_URL": emulator_url,
        "CODERD_AUTH_URL": emulator_url,
        "CODERD_CLIENT_ID": "client1",
        "CODERD_CLIENT_SECRET": "secret123",
        "CODERD_REQUEST_QUEUE": broker.request_queue,
        # Quota pacing off unless a test turns it on: what it paces depends on the time of day.
        "CODERD_QUOTA_BURST": "1",
        "CODERD_DEFAULT_REPLY_QUEUE": broker.default_reply_queue,
        "CODERD_STATE_DIR": str(state_dir),
        "CODERD_INBOX_DIR": str(state_dir / "inbox"),
        "CODERD_OUTBOX_DIR": str(state_dir / "outbox"),
        "CODERD_HTTP_LISTEN": "127.0.0.1:0",
        "CODERD_LOG_FORMAT": "json",
    }
    env.update({f"CODERD_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
