"""A three-node RabbitMQ cluster on this machine (scripts/cluster), for tests and benchmarks
that kill broker nodes: the `rabbit_cluster` fixture, the cluster's controls, the test's
client on one node, and a log of the replies as they come."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import aio_pika
import pytest

from harness import ROOT, Broker

SCRIPT = ROOT / "scripts" / "cluster"
NODES = (1, 2, 3)


def installed() -> bool:
    return bool(shutil.which("rabbitmq-server") or Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists())


def node_name(n: int) -> str:
    return f"coderd-{n}@localhost"


class Cluster:
    """The running cluster: its nodes' AMQP URLs (node n is urls[n - 1]) and what
    scripts/cluster does to them."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    @staticmethod
    def start() -> "Cluster":
        """`scripts/cluster start` (stops and wipes leftovers first); raises if it fails."""
        done = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/cluster start failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return Cluster(done.stdout.split())

    @staticmethod
    def stop() -> None:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=300)

    async def run(self, *args: str, timeout: float = 120) -> str:
        process = await asyncio.create_subprocess_exec(str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        if process.returncode != 0:
            raise RuntimeError(f"scripts/cluster {' '.join(args)} failed ({process.returncode}): {err.decode()[-2000:]}")
        return out.decode()

    async def kill(self, n: int) -> None:
        """kill -9 node n's beam.smp (returns once the process is gone)."""
        await self.run("kill", str(n))

    async def start_node(self, n: int) -> None:
        await self.run("start-node", str(n))

    async def queue_info(self, queue: str, *columns: str, via: int) -> list[str]:
        """`rabbitmqctl list_queues name <columns>` for one queue, asked of node `via`."""
        out = await self.run("ctl", str(via), "list_queues", "name", *columns, "--quiet", "--no-table-headers")
        for line in out.splitlines():
            fields = line.split("\t")
            if fields[0] == queue:
                return fields[1:]
        raise LookupError(f"no queue {queue!r} on the cluster")

    async def leader(self, queue: str, *, via: int) -> int:
        """The node (1-3) hosting the leader of quorum queue `queue`."""
        [leader] = await self.queue_info(queue, "leader", via=via)
        return next(n for n in NODES if node_name(n) == leader)


class ClusterBroker(Broker):
    """The harness's client on one node of the cluster, its reply queue a quorum queue: a
    classic queue lives on one node only, and would die with it."""

    async def open(self) -> "ClusterBroker":
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel()
        await self.channel.declare_queue(self.reply_queue, durable=True, arguments={"x-queue-type": "quorum"})
        return self

    async def close(self) -> None:
        channel = await self.connection.channel()
        # What coderd declares besides the harness's queues (the lease, the state stream).
        for name in (f"{self.request_queue}.lease", f"{self.request_queue}.state"):
            try:
                await channel.queue_delete(name)
            except Exception:  # noqa: BLE001 - not declared by this version of coderd
                channel = await self.connection.channel()
        await channel.close()
        await super().close()


class ReplyLog:
    """Every reply on a broker's reply queue as it comes (auto-acked): when, to which
    correlation id, with what status."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []  # time.monotonic() of each reply, in order
        self.counts: Counter[str] = Counter()  # replies per correlation id
        self.statuses: Counter[str] = Counter()
        self._changed = asyncio.Event()

    async def start(self, broker: Broker) -> "ReplyLog":
        """Consume the broker's reply queue (already declared by its open())."""
        self._channel = await broker.connection.channel()
        self._queue = await self._channel.declare_queue(broker.reply_queue, passive=True)
        self._tag = await self._queue.consume(self._take, no_ack=True)
        return self

    async def stop(self) -> None:
        """Stop consuming (before the queue is deleted: the broker would cancel it, noisily)."""
        await self._queue.cancel(self._tag)
        await self._channel.close()

    async def _take(self, message) -> None:
        self.arrivals.append(time.monotonic())
        self.counts[message.correlation_id] += 1
        self.statuses[json.loads(message.body).get("status")] += 1
        self._changed.set()

    @property
    def duplicates(self) -> int:
        return len(self.arrivals) - len(self.counts)

    async def wait_for(self, answered: int, *, timeout: float) -> None:
        """Until `answered` correlation ids have a reply."""
        deadline = time.monotonic() + timeout
        while len(self.counts) < answered:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise AssertionError(f"only {len(self.counts)} of {answered} answered within {timeout} s") from None

    async def wait_all(self, expected: set[str], *, quiet: float = 2.0, timeout: float = 90) -> set[str]:
        """Until every expected id has a reply and nothing more comes for `quiet` seconds
        (late duplicates are counted), or `timeout`; returns the ids still unanswered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), quiet)
            except asyncio.TimeoutError:
                if set(self.counts) >= expected:
                    break
        return expected - set(self.counts)

    def stall(self, killed_at: float) -> tuple[float, float]:
        """(last reply before the stall, first reply after it) around a kill at `killed_at`:
        the stall is the longest pause in replies from the kill on (replies already in
        flight at the kill still arrive within milliseconds, before it)."""
        before = [t for t in self.arrivals if t <= killed_at]
        points = [before[-1] if before else killed_at, *sorted(t for t in self.arrivals if t > killed_at)]
        if len(points) < 2:
            return points[0], float("inf")  # nothing since the kill
        gap, resumed = max((b - a, b) for a, b in zip(points, points[1:]))
        return resumed - gap, resumed


@pytest.fixture(scope="session")
def rabbit_cluster():
    """The three nodes started once for the session (about 15 s), stopped at its end."""
    if not installed():
        pytest.skip("rabbitmq-server is not installed: no cluster to test against")
    try:
        yield Cluster.start()
    finally:
        Cluster.stop()
