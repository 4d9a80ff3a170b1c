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
from ..constants import DELIVERY_LIMIT, PREFETCH
from ..lifecycle import Component
from ..logs import get_logger

log = get_logger("coderd.broker")


class NotConnected(Exception):
    """The broker link is not (or no longer) connected."""


class FailoverConnection(RobustConnection):
    """A robust connection over several broker nodes: each (re)connection tries them in
    turn, starting after the node used last, and fails only when none answers."""

    def __init__(self, urls: list[str], **kwargs) -> None:
        self._urls = [URL(u) for u in urls]
        self._current = 0
        super().__init__(self._urls[0], **kwargs)

    # RobustConnection opens every transport through this (name-mangled) hook.
    async def _RobustConnection__connect_transport(self) -> None:
        last_error: BaseException | None = None
        for step in range(len(self._urls)):
            index = (self._current + step) % len(self._urls)
            self.url = self._urls[index]
            try:
                await super()._RobustConnection__connect_transport()
            except CONNECTION_EXCEPTIONS as exc:
                last_error = exc
                log.warning("broker_node_unreachable", node=f"{self.url.host}:{self.url.port}",
                            error=type(exc).__name__)
                continue
            # Next time start from the node after this one: it may be the one that failed.
            self._current = index + 1
            return
        raise last_error


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
        self.connection: FailoverConnection | None = None
        self._consume: AbstractRobustChannel | None = None
        self._reply: AbstractRobustChannel | None = None
        self._probe: AbstractRobustChannel | None = None
        self.request_queue: AbstractRobustQueue | None = None
        self.reconnects = 0  # broker reconnections since start

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
        self.connection = FailoverConnection(self.settings.amqp_urls, client_properties={
            "connection_name": "coderd"})
        await self.connection.connect(timeout=30)
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self._consume = await self.connection.channel()
        await self._consume.set_qos(prefetch_count=PREFETCH)
        self._reply = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        name = self.settings.request_queue
        await self._consume.declare_queue(dead_letter_queue(name), durable=True, arguments={"x-queue-type": "quorum"})
        await self._consume.declare_queue(
            self.settings.default_reply_queue, durable=True, arguments={"x-queue-type": "quorum"})
        self.request_queue = await self._consume.declare_queue(
            name, durable=True, arguments=request_queue_arguments(name))

    async def stop(self) -> None:
        connection, self.connection = self.connection, None
        self._consume = self._reply = self._probe = self.request_queue = None
        if connection is not None:
            await connection.close()

    def _on_reconnect(self, *_args) -> None:
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
