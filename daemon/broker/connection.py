"""The broker link: one robust connection (failing over between the nodes of `amqp_url`),
its channels, and the queues coderd declares. Until it is connected, asking it for a
channel raises NotConnected."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from ..config import Settings
from ..constants import BULK, DELIVERY_LIMIT, INTERACTIVE, INTERACTIVE_PREFETCH, PREFETCH
from ..lifecycle import Component
from ..logs import get_logger

log = get_logger("coderd.broker")


class NotConnected(Exception):
    """The broker link is not (or no longer) connected."""


class Nodes:
    """The broker's nodes (the URLs of `amqp_url`), tried in turn.

    The first connection tries each node until one answers. After that, aio-pika's robust
    connection reconnects by itself to its `url`; whenever the connection is lost, that
    `url` moves on to the next node, and on again while no node answers. (`url` is the
    connection's public address: aio-pika's own update_secret() rewrites it the same way.)
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = [URL(u) for u in urls]
        self.index = 0
        self._rotating: asyncio.Task | None = None

    async def connect(self, *, timeout: float, **kwargs) -> RobustConnection:
        last_error: BaseException | None = None
        for step in range(len(self.urls)):
            index = (self.index + step) % len(self.urls)
            connection = RobustConnection(self.urls[index], **kwargs)
            try:
                await connection.connect(timeout=timeout)
            except (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError) as exc:
                last_error = exc
                log.warning("broker_node_unreachable", node=self._node(index), error=type(exc).__name__)
                await connection.close()
                continue
            self.index = index
            if len(self.urls) > 1:
                connection.close_callbacks.add(self._on_close)
            return connection
        raise last_error

    def _node(self, index: int) -> str:
        return f"{self.urls[index].host}:{self.urls[index].port}"

    def _on_close(self, connection: RobustConnection, exc: BaseException | None = None) -> None:
        if exc is None or connection.is_closed or (self._rotating and not self._rotating.done()):
            return  # closed on purpose, or already moving on
        self._rotating = asyncio.get_running_loop().create_task(self._rotate(connection))

    async def _rotate(self, connection: RobustConnection) -> None:
        # The node just lost may be the one that is down: the next attempt goes elsewhere.
        while not connection.is_closed and not connection.connected.is_set():
            self.index = (self.index + 1) % len(self.urls)
            connection.url = self.urls[self.index]
            log.info("broker_next_node", node=self._node(self.index))
            try:
                await asyncio.wait_for(connection.connected.wait(), connection.reconnect_interval + 1)
            except asyncio.TimeoutError:
                continue


def dead_letter_queue(request_queue: str) -> str:
    return f"{request_queue}.dead"


def request_queue_arguments(request_queue: str) -> dict:
    return {
        "x-queue-type": "quorum",
        # One replica consumes, the others stand by and take over when it goes away.
        "x-single-active-consumer": True,
        # A message that keeps killing the daemon is dead-lettered with reason delivery_limit.
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(request_queue),
    }


class BrokerLink(Component):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes = Nodes(settings.amqp_urls)
        self.connection: RobustConnection | None = None
        self._consume: AbstractRobustChannel | None = None
        self._interactive: AbstractRobustChannel | None = None  # its own prefetch: bulk floods never delay it
        self._reply: AbstractRobustChannel | None = None
        self._probe: AbstractRobustChannel | None = None
        self.request_queue: AbstractRobustQueue | None = None
        self.queues: dict[str, AbstractRobustQueue] = {}  # by lane
        self.reconnects = 0  # broker reconnections since start
        # Set while connected with every channel restored (after a reconnect the robust
        # connection restores channels one by one: a consumer may get a delivery before
        # another channel is back).
        self.restored = asyncio.Event()

    @property
    def connected(self) -> bool:
        c = self.connection
        return c is not None and not c.is_closed and c.connected.is_set()

    @property
    def consume_channel(self) -> AbstractRobustChannel:
        if self._consume is None:
            raise NotConnected("not connected to the broker")
        return self._consume

    @property
    def reply_channel(self) -> AbstractRobustChannel:
        """Publisher confirms on, and returns raised: a publish returns once the broker has it."""
        if self._reply is None:
            raise NotConnected("not connected to the broker")
        return self._reply

    async def start(self) -> None:
        self.connection = await self.nodes.connect(timeout=30, client_properties={"connection_name": "coderd"})
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self._consume = await self.connection.channel()
        await self._consume.set_qos(prefetch_count=PREFETCH)
        self._interactive = await self.connection.channel()
        await self._interactive.set_qos(prefetch_count=INTERACTIVE_PREFETCH)
        self._reply = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.connection.close_callbacks.add(self._on_close)
        await self._declare_default_reply_queue(self._consume)
        for lane, name, channel in ((BULK, self.settings.request_queue, self._consume),
                                    (INTERACTIVE, self.settings.interactive_queue, self._interactive)):
            await channel.declare_queue(dead_letter_queue(name), durable=True, arguments={"x-queue-type": "quorum"})
            self.queues[lane] = await channel.declare_queue(name, durable=True, arguments=request_queue_arguments(name))
        self.request_queue = self.queues[BULK]
        self.restored.set()

    async def stop(self) -> None:
        connection, self.connection = self.connection, None
        self._consume = self._interactive = self._reply = self._probe = self.request_queue = None
        self.queues = {}
        if connection is not None:
            await connection.close()

    async def declare_default_reply_queue(self) -> None:
        """Declare the default reply queue again (someone deleted it)."""
        channel = await self.connection.channel()
        try:
            await self._declare_default_reply_queue(channel)
        finally:
            await channel.close()

    async def _declare_default_reply_queue(self, channel) -> None:
        await channel.declare_queue(self.settings.default_reply_queue, durable=True,
                                    arguments={"x-queue-type": "quorum"})

    def _on_close(self, _connection, exc: BaseException | None = None) -> None:
        self.restored.clear()
        # One line for a cut, whatever it does to the requests in flight (each of those is
        # delivered again by the broker; their own failures are logged at debug level).
        if exc is not None and self.connection is not None:
            log.warning("broker_connection_lost", error=f"{type(exc).__name__}: {exc}"[:300])

    def _on_reconnect(self, *_args) -> None:
        self.restored.set()
        self.reconnects += 1
        log.info("broker_reconnected")

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in `queue`, or -1 when it cannot be told now (never raises)."""
        if not self.connected:
            return -1
        try:
            if self._probe is None or self._probe.is_closed:
                self._probe = await self.connection.channel()
            declared = await asyncio.wait_for(self._probe.declare_queue(queue, passive=True), 2)
            return declared.declaration_result.message_count
        except Exception:  # noqa: BLE001 - a probe must never fail its caller
            self._probe = None
            return -1
