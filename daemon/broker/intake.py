"""The AMQP edge: connection (with fail-over between nodes), queue declarations, and
the consumer that hands each request message to the dispatcher."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from ..config import Settings
from ..constants import DELIVERY_LIMIT, PREFETCH
from ..logs import get_logger

log = get_logger("coderd.intake")


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


class Intake:
    def __init__(self, settings: Settings,
                 handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                 on_first_delivery: Callable[[], None]) -> None:
        self.settings = settings
        self.handle = handle
        self.on_first_delivery = on_first_delivery
        self.connection: FailoverConnection | None = None
        self.consume_channel: AbstractRobustChannel | None = None
        self.reply_channel: AbstractRobustChannel | None = None
        self.queue: AbstractRobustQueue | None = None
        self.consumer_tag: str | None = None
        self.tasks: set[asyncio.Task] = set()  # strong references to message handlers
        self._delivered_since_subscribe = False

    @property
    def consuming(self) -> bool:
        return self.consumer_tag is not None

    @property
    def active(self) -> bool:
        """Delivered to since subscribing: the active consumer of the queue."""
        return self.consuming and self._delivered_since_subscribe

    async def connect(self) -> None:
        self.connection = FailoverConnection(self.settings.amqp_urls, client_properties={
            "connection_name": "coderd"})
        await self.connection.connect(timeout=30)
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self.consume_channel = await self.connection.channel()
        await self.consume_channel.set_qos(prefetch_count=PREFETCH)
        self.reply_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        name = self.settings.request_queue
        await self.consume_channel.declare_queue(
            dead_letter_queue(name), durable=True, arguments={"x-queue-type": "quorum"})
        await self.consume_channel.declare_queue(
            self.settings.default_reply_queue, durable=True, arguments={"x-queue-type": "quorum"})
        self.queue = await self.consume_channel.declare_queue(
            name, durable=True, arguments=request_queue_arguments(name))

    async def start_consuming(self) -> None:
        if self.consumer_tag is None:
            self._delivered_since_subscribe = False
            self.consumer_tag = await self.queue.consume(self._on_message)
            log.info("consuming", queue=self.settings.request_queue)

    async def stop_consuming(self) -> None:
        """Take no more messages; those already delivered stay with their handlers."""
        tag, self.consumer_tag = self.consumer_tag, None
        if tag is not None and self.queue is not None:
            try:
                await self.queue.cancel(tag)
            except Exception as exc:  # a closed channel has no consumer to cancel anyway
                log.warning("cancel_consumer_failed", error=str(exc))
            log.info("stopped_consuming", queue=self.settings.request_queue)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._delivered_since_subscribe:
            self._delivered_since_subscribe = True
            self.on_first_delivery()
        task = asyncio.get_running_loop().create_task(self.handle(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_reconnect(self, *_args) -> None:
        # Consumers are restored on a new channel: another replica may have been
        # active meanwhile, so this one counts as newly subscribed.
        self._delivered_since_subscribe = False
        log.info("broker_reconnected")

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
