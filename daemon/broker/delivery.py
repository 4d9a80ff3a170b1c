"""One delivery of a request message: turned into what the core sees (`Incoming`), handed
to the dispatcher, and settled by the `AckPolicy` it returns, whatever happens meanwhile."""

from __future__ import annotations

import asyncio
import uuid
from typing import Awaitable, Callable, Protocol

from aio_pika.abc import AbstractIncomingMessage

from ..logs import get_logger
from ..request.incoming import AckPolicy, Incoming, ReplyAddress

log = get_logger("coderd.broker")

Dispatch = Callable[[Incoming], Awaitable[AckPolicy]]


class Requeuer(Protocol):
    async def return_to_queue(self, message: AbstractIncomingMessage, queue: str) -> None: ...


def correlation_id_of(message: AbstractIncomingMessage) -> str:
    """The request's correlation_id; else its message_id; else a new one."""
    return message.correlation_id or message.message_id or uuid.uuid4().hex


def incoming_from(message: AbstractIncomingMessage, lane: str) -> Incoming:
    producer = message.app_id or message.user_id or (message.headers or {}).get("x-coderd-user-id") or None
    return Incoming(body=message.body, address=ReplyAddress(correlation_id_of(message), message.reply_to),
                    lane=lane, producer=producer if isinstance(producer, str) else None,
                    content_encoding=message.content_encoding or None)


def delivery_lost(message: AbstractIncomingMessage) -> bool:
    """The channel that delivered `message` is closed (the connection was cut): it can no
    longer be settled, and the broker delivers it again by itself."""
    try:
        message.channel  # aio-pika raises when that channel is closed
    except AttributeError:  # not an aio-pika message (tests)
        return False
    except Exception:  # noqa: BLE001 - ChannelInvalidStateError and kin
        return True
    return False


async def process(message: AbstractIncomingMessage, *, lane: str, queue: str, dispatch: Dispatch,
                  requeuer: Requeuer) -> AckPolicy:
    """Dispatch one delivery and settle it. Cancelled at shutdown, it is handed back;
    cancelled because its connection was cut, it is left to the broker (which delivers it
    again), so nothing is coded for a delivery that can no longer be answered."""
    incoming = incoming_from(message, lane)
    try:
        policy = await dispatch(incoming)
    except asyncio.CancelledError:
        if not delivery_lost(message):
            await asyncio.shield(settle(message, AckPolicy.HAND_BACK, queue, requeuer, incoming.address))
        raise
    except Exception:  # noqa: BLE001 - the dispatcher never raises; if it does, the broker counts it
        log.exception("request_error", correlation_id=incoming.address.correlation_id)
        policy = AckPolicy.NACK
    await settle(message, policy, queue, requeuer, incoming.address)
    return policy


async def settle(message: AbstractIncomingMessage, policy: AckPolicy, queue: str, requeuer: Requeuer,
                 address: ReplyAddress) -> None:
    """Ack, hand back, or nack. When the channel is gone nothing can be settled: the broker
    then requeues the message itself, which is what each policy wants anyway."""
    try:
        if policy is AckPolicy.HAND_BACK:
            try:
                await requeuer.return_to_queue(message, queue)
            except Exception as exc:  # noqa: BLE001 - not republished: let the broker requeue it
                log.warning("hand_back_failed", correlation_id=address.correlation_id, error=str(exc))
                await message.nack(requeue=True)
                return
        if policy is AckPolicy.NACK:
            await message.nack(requeue=True)
        else:
            await message.ack()
    except Exception as exc:  # noqa: BLE001 - channel closed: the broker redelivers
        # A cut connection is logged once, by the broker link; this is one of its many echoes.
        log.debug("settle_failed", correlation_id=address.correlation_id, policy=policy.value,
                  error=f"{type(exc).__name__}: {exc}")
