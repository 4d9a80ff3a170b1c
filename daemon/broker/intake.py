"""The consumer of the request queue: each delivery becomes a task that the dispatcher
handles and `delivery.process` settles. Consuming pauses while the day's quota is used
up, and at shutdown stops first: what is in flight gets a grace period, the rest is
handed back to the queue."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage

from ..api.limiter import CallLimiter
from ..api.quota import QuotaLedger
from ..config import Settings
from ..lifecycle import Component
from ..logs import get_logger
from .connection import BrokerLink
from .delivery import Dispatch, Requeuer, process

SHUTDOWN_GRACE = 20.0  # seconds for requests in flight to get their replies at SIGTERM

log = get_logger("coderd.intake")


class Intake(Component):
    def __init__(self, settings: Settings, link: BrokerLink, dispatch: Dispatch, requeuer: Requeuer,
                 limiter: CallLimiter) -> None:
        self.settings, self.link, self.dispatch, self.requeuer = settings, link, dispatch, requeuer
        self.limiter = limiter
        self.tasks: set[asyncio.Task] = set()  # strong references to message handlers
        self.paused_for: str | None = None  # why consuming is paused (quota), or None
        self._tag: str | None = None
        self._delivered_since_subscribe = False
        self._stopping = False

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    @property
    def state(self) -> str:
        """active (delivered to since subscribing), waiting (standby replica, or nothing
        delivered yet: single active consumer gives no other sign), paused or stopped."""
        if self.paused_for is not None:
            return "paused"
        if not self.consuming:
            return "stopped"
        return "active" if self._delivered_since_subscribe else "waiting"

    async def start(self) -> None:
        self.link.connection.reconnect_callbacks.add(self._on_reconnect)
        if self.paused_for is None:
            await self._subscribe()

    async def stop(self) -> None:
        """Take no more messages; those in flight get the grace period, then are handed back."""
        self._stopping = True
        await self._unsubscribe()
        if self.tasks:
            log.info("stopping", in_flight=len(self.tasks))
            _, late = await asyncio.wait(set(self.tasks), timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()  # each hands its message back to the queue
            if late:
                await asyncio.wait(late, timeout=10)
                log.warning("handed_back_at_shutdown", requests=len(late))

    async def pause(self, reason: str) -> None:
        self.paused_for = reason
        await self._unsubscribe()

    async def resume(self) -> None:
        self.paused_for = None
        if not self._stopping:
            await self._subscribe()

    async def follow_quota(self, ledger: QuotaLedger) -> None:
        """Supervised: while the day's calls are used up, requests wait in the queue (not
        unacked past the broker's consumer timeout); consuming resumes at 00:00 UTC."""
        while True:
            await ledger.wait_exhausted()
            await self.pause("daily quota used up: consuming resumes at 00:00 UTC")
            log.warning("quota_exhausted", used=ledger.used, resumes_in_seconds=round(ledger.seconds_until_reset()))
            await ledger.wait_for_reset()
            log.info("quota_reset")
            await self.resume()

    async def _subscribe(self) -> None:
        if self._tag is None:
            self._delivered_since_subscribe = False
            self._tag = await self.link.request_queue.consume(self._on_message)
            log.info("consuming", queue=self.settings.request_queue)

    async def _unsubscribe(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None and self.link.request_queue is not None:
            try:
                await self.link.request_queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - a closed channel has no consumer to cancel anyway
                log.warning("cancel_consumer_failed", error=str(exc))
            log.info("stopped_consuming", queue=self.settings.request_queue)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._delivered_since_subscribe:
            # Newly active: a predecessor may have called the API just before it went away.
            self._delivered_since_subscribe = True
            self.limiter.guard()
        task = asyncio.get_running_loop().create_task(process(
            message, lane="bulk", queue=self.settings.request_queue, dispatch=self.dispatch,
            requeuer=self.requeuer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_reconnect(self, *_args) -> None:
        # Consumers are restored on a new channel: another replica may have been
        # active meanwhile, so this one counts as newly subscribed.
        self._delivered_since_subscribe = False
