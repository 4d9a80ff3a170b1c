"""The replicated state stream (`{request_queue}.state`): a RabbitMQ stream, replicated
across the broker's nodes like the quorum queues, that the active replica appends to and
a newly active replica reads back (replica/). Only the AMQP mechanics live here: append
with a publisher confirm, and read from an offset up to "now".

"Now" is a marker entry appended just before reading: a stream consumer is never told it
has reached the end, but it knows it has read everything appended before the marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Callable

import aio_pika
from aio_pika.abc import AbstractRobustChannel

from ..lifecycle import Component
from .connection import BrokerLink

MAX_AGE = "7D"  # entries older than this are dropped (a job's entries are rewritten as it runs)
SEGMENT_BYTES = 50_000_000  # retention drops whole segments: small ones let it work
READ_PREFETCH = 200
READ_TIMEOUT = 120.0  # reading back a week of entries; a stalled read is retried by the caller
MARKER = "marker"

# handler(kind, headers, body, offset) for each entry read
EntryHandler = Callable[[str, dict, bytes, int], None]


def state_stream(request_queue: str) -> str:
    return f"{request_queue}.state"


def state_stream_arguments() -> dict:
    return {"x-queue-type": "stream", "x-max-age": MAX_AGE, "x-stream-max-segment-size-bytes": SEGMENT_BYTES}


class StateStream(Component):
    def __init__(self, link: BrokerLink, request_queue: str) -> None:
        self.link, self.name = link, state_stream(request_queue)
        self._publish: AbstractRobustChannel | None = None

    async def start(self) -> None:
        self._publish = await self.link.connection.channel(publisher_confirms=True)
        await self._publish.declare_queue(self.name, durable=True, arguments=state_stream_arguments())

    async def stop(self) -> None:
        if self._publish is not None and not self._publish.is_closed:
            await self._publish.close()
        self._publish = None

    async def append(self, kind: str, body: bytes = b"", **headers) -> None:
        """Append one entry; returns once the broker has it (replicated to a quorum of nodes)."""
        await self._publish.default_exchange.publish(
            aio_pika.Message(body, headers={"kind": kind, **headers}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self.name)

    async def read(self, handler: EntryHandler, *, offset: int | str = "first") -> None:
        """Hand every entry from `offset` up to now to `handler`, in stream order."""
        await self.link.restored.wait()
        marker = uuid.uuid4().hex
        await self.append(MARKER, id=marker)
        # A channel of its own, closed at the end, not a consumer cancelled: deliveries still
        # on their way to a cancelled consumer are rejected by the client, and a stream
        # answers basic.reject by closing the whole connection.
        channel = await self.link.connection.channel()
        try:
            await channel.set_qos(prefetch_count=READ_PREFETCH)  # a stream consumer must set one
            queue = await channel.declare_queue(self.name, durable=True, arguments=state_stream_arguments())
            entries: asyncio.Queue = asyncio.Queue()

            async def take(message) -> None:
                entries.put_nowait(message)

            await queue.consume(take, arguments={"x-stream-offset": offset})
            while True:
                message = await asyncio.wait_for(entries.get(), READ_TIMEOUT)
                headers = dict(message.headers or {})
                kind = text(headers.get("kind", ""))
                await message.ack()  # a stream consumer's credit
                if kind == MARKER:
                    if text(headers.get("id")) == marker:
                        return
                    continue
                handler(kind, headers, message.body, int(headers.get("x-stream-offset", -1)))
        finally:
            with contextlib.suppress(Exception):  # a channel already closed has no consumer left
                await asyncio.wait_for(channel.close(), 5)


def text(value) -> str:
    """A header value as text (AMQP long strings may arrive as bytes)."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
