"""The consumers of the two request queues — the bulk lane (`request_queue`) and the
interactive lane (`interactive_queue`, on a channel of its own) —: each delivery becomes a
task that the dispatcher handles and `delivery.process` settles. Consuming pauses while
the day's quota is used up or state_dir cannot be written, and at shutdown stops first:
what is in flight gets a grace period, the rest is handed back to the queue.

Only the active replica (the lease's holder, replica/role.py) subscribes; the others
are paused as standbys. Both queues are single-active-consumer as well, so even a
replica that believes itself active after losing the lease is never delivered to while
another one consumes.
"""

from __future__ import annotations

import asyncio
from functools import partial

from aio_pika.abc import AbstractIncomingMessage

from ..api.quota import QuotaLedger
from ..config import Settings
from ..constants import BULK, INTERACTIVE, STANDBY
from ..lifecycle import Component
from ..logs import get_logger
from ..statedir import StateDir
from .connection import BrokerLink
from .delivery import Dispatch, Requeuer, process

SHUTDOWN_GRACE = 20.0  # seconds for requests in flight to get their replies at SIGTERM
CANCEL_TIMEOUT = 10.0

log = get_logger("coderd.intake")


class Intake(Component):
    def __init__(self, settings: Settings, link: BrokerLink, dispatch: Dispatch, requeuer: Requeuer) -> None:
        self.settings, self.link, self.dispatch, self.requeuer = settings, link, dispatch, requeuer
        self.queue_names = {BULK: settings.request_queue, INTERACTIVE: settings.interactive_queue}
        self.tasks: set[asyncio.Task] = set()  # strong references to message handlers
        self._pauses: dict[str, str] = {}  # why consuming is paused: {cause: reason}
        self._tags: dict[str, str] = {}  # consumer tags, by lane
        self._stopping = False

    @property
    def consuming(self) -> bool:
        return bool(self._tags)

    @property
    def pauses(self) -> dict[str, str]:
        """Why consuming is paused: {cause: reason} (quota, state_dir)."""
        return dict(self._pauses)

    @property
    def paused_for(self) -> str | None:
        """Why consuming is paused (the causes joined), or None."""
        return "; ".join(self._pauses.values()) or None

    @property
    def state(self) -> str:
        """active (consuming), standby (another replica holds the lease), paused or stopped."""
        if STANDBY in self._pauses:
            return STANDBY
        if self.paused_for is not None:
            return "paused"
        return "active" if self.consuming else "stopped"

    async def start(self) -> None:
        self.link.connection.close_callbacks.add(self._on_connection_lost)
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

    async def pause(self, cause: str, reason: str) -> None:
        """Stop consuming for `cause` (quota, state_dir, ...) until resume(cause)."""
        self._pauses[cause] = reason
        await self._unsubscribe()

    async def resume(self, cause: str) -> None:
        self._pauses.pop(cause, None)
        if not self._pauses and not self._stopping:
            await self._subscribe()

    async def follow_quota(self, ledger: QuotaLedger) -> None:
        """Supervised: while the day's calls are used up, requests wait in the queue (not
        unacked past the broker's consumer timeout); consuming resumes at 00:00 UTC."""
        while True:
            await ledger.wait_exhausted()
            await self.pause("quota", "daily quota used up: consuming resumes at 00:00 UTC")
            log.warning("quota_exhausted", used=ledger.used, resumes_in_seconds=round(ledger.seconds_until_reset()))
            await ledger.wait_for_reset()
            log.info("quota_reset")
            await self.resume("quota")

    async def follow_state_dir(self, state: StateDir) -> None:
        """Supervised: while state_dir cannot be written, take no requests (nothing could be
        counted or journaled); consuming resumes when it can."""
        while True:
            await state.wait_unwritable()
            await self.pause("state_dir", f"{state.problem}: consuming resumes when it can be written")
            await state.wait_writable()
            await self.resume("state_dir")

    async def _subscribe(self) -> None:
        if self._tags:
            return
        for lane in (BULK, INTERACTIVE):
            self._tags[lane] = await self.link.queues[lane].consume(partial(self._on_message, lane))
        log.info("consuming", queue=self.queue_names[BULK], interactive_queue=self.queue_names[INTERACTIVE])

    async def _unsubscribe(self) -> None:
        tags, self._tags = self._tags, {}
        for lane, tag in tags.items():
            queue = self.link.queues.get(lane)
            if queue is None:
                continue
            connected = self.link.restored.is_set()  # cleared as soon as a cut is seen
            try:  # the consumer is forgotten as cancel() starts (not restored on reconnect); the RPC may fail
                await asyncio.wait_for(queue.cancel(tag), CANCEL_TIMEOUT if connected else 0.1)
            except Exception as exc:  # noqa: BLE001 - a closed channel has no consumer to cancel anyway
                if connected:
                    log.warning("cancel_consumer_failed", queue=self.queue_names[lane], error=str(exc))
        if tags:
            log.info("stopped_consuming", queue=self.queue_names[BULK], interactive_queue=self.queue_names[INTERACTIVE])

    async def _on_message(self, lane: str, message: AbstractIncomingMessage) -> None:
        task = asyncio.get_running_loop().create_task(process(
            message, lane=lane, queue=self.queue_names[lane], dispatch=self.dispatch, requeuer=self.requeuer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def drop_in_flight(self) -> None:
        """Stop working on every request held (each goes back to the queue, or is already
        void): their records leave the backlog uncoded."""
        for task in list(self.tasks):
            task.cancel()

    def _on_connection_lost(self, _connection, exc: BaseException | None = None) -> None:
        # Every unacked delivery is void: the broker delivers it again, perhaps to another replica.
        if exc is not None and not self._stopping:
            self.drop_in_flight()
