"""Publishing replies: persistent, confirmed by the broker, unroutable ones caught."""

from __future__ import annotations

import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import PublishError

from ..logs import get_logger
from .connection import BrokerLink

log = get_logger("coderd.replies")

UNDELIVERABLE_HEADER = "x-coderd-undeliverable-to"


class ReplyPublisher:
    def __init__(self, link: BrokerLink, default_reply_queue: str) -> None:
        self.link = link  # its reply channel has publisher confirms on and returns raised
        self.default_reply_queue = default_reply_queue

    async def publish(self, body: bytes, reply_to: str | None, correlation_id: str) -> None:
        """Publish a rendered reply; returns once the broker has confirmed it is queued.

        A reply whose `reply_to` queue does not exist is not dropped: it goes to the
        default reply queue with a header naming where it should have gone.
        """
        target = reply_to or self.default_reply_queue
        try:
            await self._send(body, target, correlation_id, {})
        except PublishError:
            if target == self.default_reply_queue:
                raise
            log.warning("reply_unroutable", correlation_id=correlation_id, reply_to=target,
                        rerouted_to=self.default_reply_queue)
            await self._send(body, self.default_reply_queue, correlation_id, {UNDELIVERABLE_HEADER: target})

    async def return_to_queue(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Put a request back at the tail of its queue, confirmed, before it is acked.

        Unlike a nack with requeue, this does not count towards the queue's delivery
        limit, which is kept for messages that really do crash the daemon.
        """
        copy = aio_pika.Message(
            message.body, headers=message.headers, content_type=message.content_type,
            correlation_id=message.correlation_id, reply_to=message.reply_to,
            message_id=message.message_id or uuid.uuid4().hex, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.link.reply_channel.default_exchange.publish(copy, routing_key=queue, mandatory=True)

    async def _send(self, body: bytes, routing_key: str, correlation_id: str, headers: dict) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            message_id=uuid.uuid4().hex,  # lets the broker's return be matched to this publish
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or None,
        )
        await self.link.reply_channel.default_exchange.publish(message, routing_key=routing_key, mandatory=True)
