"""Publishing replies: persistent, confirmed by the broker, unroutable ones caught, and
requests handed back to their queue.

A reply is never dropped and never makes its request be coded again: when its `reply_to`
queue does not exist it goes to the default reply queue (with a header naming where it
should have gone); when that queue is gone too it is declared again; and a reply that
can be delivered nowhere is dead-lettered, with the reason, beside the requests' dead
letters.
"""

from __future__ import annotations

import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, PublishError
from aiormq.exceptions import ChannelInvalidStateError

from ..logs import get_logger
from ..request.finish import ReplyNotConfirmed
from .connection import BrokerLink, NotConnected, dead_letter_queue

log = get_logger("coderd.replies")

UNDELIVERABLE_HEADER = "x-coderd-undeliverable-to"
REASON_HEADER = "x-coderd-dead-reason"
USER_ID_HEADER = "x-coderd-user-id"  # a handed-back request's user_id (the broker checks that property)
CONNECTION_LOST = (NotConnected, ChannelInvalidStateError, ConnectionError, *CONNECTION_EXCEPTIONS)


class ReplyPublisher:
    def __init__(self, link: BrokerLink, default_reply_queue: str, request_queue: str) -> None:
        self.link = link  # its reply channel has publisher confirms on and returns raised
        self.default_reply_queue, self.request_queue = default_reply_queue, request_queue

    async def publish(self, body: bytes, reply_to: str | None, correlation_id: str) -> None:
        """Publish a rendered reply; returns once the broker has confirmed it is queued
        (or dead-lettered). ReplyNotConfirmed when the broker could not be told."""
        try:
            await self._deliver(body, reply_to or self.default_reply_queue, correlation_id)
        except CONNECTION_LOST as exc:
            raise ReplyNotConfirmed(f"{type(exc).__name__}: {exc}", connection_lost=True) from None
        except (PublishError, aio_pika.exceptions.AMQPError) as exc:
            raise ReplyNotConfirmed(f"{type(exc).__name__}: {exc}", connection_lost=False) from None

    async def _deliver(self, body: bytes, target: str, correlation_id: str) -> None:
        try:
            await self._send(body, target, correlation_id, {})
            return
        except PublishError:
            if target != self.default_reply_queue:
                log.warning("reply_unroutable", correlation_id=correlation_id, reply_to=target,
                            rerouted_to=self.default_reply_queue)
        headers = {UNDELIVERABLE_HEADER: target} if target != self.default_reply_queue else {}
        try:
            await self._send(body, self.default_reply_queue, correlation_id, headers)
            return
        except PublishError:  # the default reply queue is gone: declare it again
            log.warning("default_reply_queue_missing", queue=self.default_reply_queue, action="declared again")
        try:
            await self.link.declare_default_reply_queue()
            await self._send(body, self.default_reply_queue, correlation_id, headers)
            return
        except (PublishError, aio_pika.exceptions.ChannelClosed) as exc:
            reason = f"no queue takes the reply ({target}, then {self.default_reply_queue}): {exc}"
        log.error("reply_dead_lettered", correlation_id=correlation_id, reason=reason)
        await self._send(body, dead_letter_queue(self.request_queue), correlation_id,
                         {UNDELIVERABLE_HEADER: target, REASON_HEADER: reason})

    async def return_to_queue(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Put a request back at the tail of its queue, confirmed, before it is acked.

        Unlike a nack with requeue, this does not count towards the queue's delivery
        limit, which is kept for messages that really do crash the daemon.
        """
        headers = dict(message.headers or {})
        if message.user_id:
            headers[USER_ID_HEADER] = message.user_id
        copy = aio_pika.Message(
            message.body, headers=headers, content_type=message.content_type,
            content_encoding=message.content_encoding, app_id=message.app_id,
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
