"""Finishing a request, on either route: its reply published and confirmed, then counted
and logged. The one place a `request_done` is written."""

from __future__ import annotations

from typing import Protocol

from ..logs import get_logger
from ..ops import metrics
from .incoming import ReplyAddress

log = get_logger("coderd.requests")


class Publisher(Protocol):
    async def publish(self, reply: dict, reply_to: str | None, correlation_id: str) -> None: ...


def records_in(reply: dict) -> int:
    if reply.get("records") is not None:
        return len(reply["records"])
    if reply.get("record") is not None:
        return 1
    return (reply.get("output") or {}).get("records", 0)


class Finisher:
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def finish(self, address: ReplyAddress, reply: dict, *, elapsed: float, lane: str = "bulk",
                     **fields) -> None:
        """Returns once the broker has confirmed the reply; raises if it could not."""
        await self.publisher.publish(reply, address.reply_to, address.correlation_id)
        metrics.observe_reply(reply, elapsed)
        error = reply.get("error") or {}
        log.info("request_done", correlation_id=address.correlation_id, status=reply["status"],
                 route=reply.get("route"), records=records_in(reply), latency_ms=round(elapsed * 1000, 1),
                 lane=lane, error=error.get("code"), **fields)
