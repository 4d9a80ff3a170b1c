"""What the benchmarks that run the daemon as a process share: a free port, stopping a
child in order, the daemon's JSON log read as it grows, percentiles, and removing the
queues a run declared."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def stop_process(process: asyncio.subprocess.Process | None, grace: float) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None: no process)."""
    if process is None:
        return None
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode


class LogTail:
    """The daemon's JSON log (one object a line), read incrementally; other lines kept as
    `unparsed` events."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.events, self._partial = path, 0, [], b""

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return self.events
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                event = {"event": "unparsed", "line": line.decode("utf-8", "replace")[:500]}
            self.events.append(event)
        return self.events

    def count(self, name: str) -> int:
        return sum(e.get("event") == name for e in self.poll())

    def find(self, name: str, **fields) -> dict | None:
        """The first event called `name` whose fields have these values."""
        for event in self.poll():
            if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    def last(self, name: str) -> dict | None:
        for event in reversed(self.poll()):
            if event.get("event") == name:
                return event
        return None

    def tail_text(self, lines: int = 15) -> str:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(len(sorted_values) * fraction) - 1)]


async def delete_queues(amqp_url: str, names: list[str]) -> None:
    import aio_pika
    try:
        connection = await aio_pika.connect(amqp_url, timeout=15)
    except Exception:  # noqa: BLE001 - no broker: nothing to clean
        return
    try:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()
