"""Which replica is active: the one holding the lease.

The lease is one message in a single-active-consumer quorum queue (`{request_queue}.lease`).
Every replica subscribes; the broker delivers the message to its one active consumer,
which keeps it unacked. When that replica's connection goes (kill -9, a partition, a lost
node), the broker takes the message back and delivers it to the next replica. So the
broker, replicated across its nodes, says who is active, and a replica that loses its
connection stops acting as active at once (`lost`), before anyone else can be given the
lease: a stale former leader fences itself.

Kept unacked for ever, the message would trip the broker's consumer_timeout (30 minutes
by default): the holder renews it every LEASE_RENEWAL seconds, publishing a fresh lease
(confirmed) before acking the one it holds, so the lease never leaves it meanwhile.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervisor
from .connection import BrokerLink

LEASE_RENEWAL = 600.0  # seconds: well under the broker's default consumer_timeout
RENEWAL_TASK = "lease-renewal"

log = get_logger("coderd.lease")


def lease_queue(request_queue: str) -> str:
    return f"{request_queue}.lease"


def lease_queue_arguments() -> dict:
    return {"x-queue-type": "quorum", "x-single-active-consumer": True}


class Lease(Component):
    def __init__(self, link: BrokerLink, request_queue: str, supervisor: Supervisor, *,
                 renew_every: float = LEASE_RENEWAL) -> None:
        self.link, self.name, self.renew_every = link, lease_queue(request_queue), renew_every
        self.supervisor = supervisor
        self.held = asyncio.Event()  # set while this replica is the active one
        self.lost = asyncio.Event()  # set while it is not
        self.lost.set()
        self._message: AbstractIncomingMessage | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None

    @property
    def holding(self) -> bool:
        return self.held.is_set()

    async def start(self) -> None:
        self._channel = await self.link.connection.channel()
        await self._channel.set_qos(prefetch_count=1)  # one lease at a time; any extra waits
        self._queue = await self._channel.declare_queue(self.name, durable=True, arguments=lease_queue_arguments())
        declared = self._queue.declaration_result
        if declared.message_count == 0 and declared.consumer_count == 0:
            await self._publish()  # nobody holds one and none waits: the first replica makes it
        self.link.connection.close_callbacks.add(self._on_connection_lost)
        await self._queue.consume(self._on_lease)
        self.supervisor.start_task(RENEWAL_TASK, self._renew)

    async def stop(self) -> None:
        await self.supervisor.stop_task(RENEWAL_TASK)
        self._give_up("stopping", log.info)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()  # the lease goes back to the queue, to the next replica

    async def _publish(self) -> None:
        await self.link.reply_channel.default_exchange.publish(
            aio_pika.Message(b"lease", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=self.name)

    async def _on_lease(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        if not self.held.is_set():
            log.info("lease_taken", queue=self.name)
            self.lost.clear()
            self.held.set()

    def _on_connection_lost(self, _connection, exc: BaseException | None = None) -> None:
        # the cut itself is the warning line (connection.py)
        self._give_up(f"broker connection lost ({type(exc).__name__})" if exc else "connection closed", log.info)

    def _give_up(self, reason: str, say=log.warning) -> None:
        self._message = None
        if self.held.is_set():
            say("lease_lost", queue=self.name, reason=reason)
            self.held.clear()
            self.lost.set()

    async def _renew(self) -> None:
        """Supervised: renew the lease while this replica holds it."""
        while True:
            await asyncio.sleep(self.renew_every)
            message = self._message
            if message is None:
                continue
            try:  # a lease already waiting (two replicas started together) is used up instead
                if await self.link.queue_depth(self.name) <= 0:  # -1: cannot tell, so publish
                    await self._publish()  # the successor first: the lease never leaves this replica
                self._message = None
                await message.ack()  # the broker delivers the next lease to us, its active consumer
            except Exception as exc:  # noqa: BLE001 - the channel is gone: so is the lease
                self._give_up(f"renewal failed ({type(exc).__name__})")
