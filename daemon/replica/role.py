"""Active or standby: this replica acts (consumes requests, calls the API, runs batch
jobs) only while it holds the lease (broker/lease.py).

On taking the lease it first reads the state stream back and takes over what the last
active replica left (adopt.py): the day's call count and the batch jobs in flight. Only
then does it consume and run jobs. On losing the lease (its broker connection went) it
stops both at once: what it held goes back to the queue, its jobs stay journaled.
"""

from __future__ import annotations

import asyncio
import time

from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from ..api.limiter import CallLimiter
from ..api.quota import QuotaLedger
from ..batch.manager import BatchManager
from ..broker.intake import Intake
from ..broker.lease import Lease
from ..broker.statestream import StateStream
from ..constants import STANDBY
from ..lifecycle import Component
from ..logs import get_logger
from ..ops import metrics
from ..ops.supervisor import Supervisor
from .adopt import adopt, describe, read_view
from .sharing import NoSharing, SharingFailed

TASK = "active-role"
RETRY_AFTER = 1.0  # seconds before a takeover interrupted by the broker is tried again
STANDBY_REASON = "standing by: another replica holds the lease"

log = get_logger("coderd.replica")


class ActiveRole(Component):
    def __init__(self, lease: Lease, stream: StateStream, sharing: NoSharing, intake: Intake, batch: BatchManager,
                 ledger: QuotaLedger, limiter: CallLimiter, supervisor: Supervisor) -> None:
        self.lease, self.stream, self.sharing = lease, stream, sharing
        self.intake, self.batch, self.ledger, self.limiter = intake, batch, ledger, limiter
        self.supervisor = supervisor
        self.active = False
        self.since: float | None = None  # when this replica last became active (time.time())
        self.takeovers = 0

    @property
    def name(self) -> str:
        return "active" if self.active else "standby"

    async def start(self) -> None:
        await self.intake.pause(STANDBY, STANDBY_REASON)
        self.supervisor.start_task(TASK, self.run)

    async def stop(self) -> None:
        await self.supervisor.stop_task(TASK)

    async def run(self) -> None:
        """Supervised: promote on taking the lease, demote on losing it."""
        await self._demote()  # a fresh start, or a restart after a promotion failed half-way
        while True:
            if not self.lease.holding:
                log.info("standing_by", lease=self.lease.name)
            await self.lease.held.wait()
            try:
                await self._promote()
            except (*CONNECTION_EXCEPTIONS, SharingFailed, asyncio.TimeoutError) as exc:
                # the broker went while the state was being read: the lease went with it, or
                # the next attempt (after a pause, once the link is back) finds it held still
                log.warning("takeover_interrupted", error=f"{type(exc).__name__}: {exc}"[:300])
                await self._demote()
                await asyncio.sleep(RETRY_AFTER)
                continue
            await self.lease.lost.wait()
            await self._demote()

    async def _promote(self) -> None:
        started = time.monotonic()
        reading = asyncio.ensure_future(read_view(self.stream))
        lost = asyncio.ensure_future(self.lease.lost.wait())
        await asyncio.wait({reading, lost}, return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if not self.lease.holding:  # lost it while reading: nothing was done
            reading.cancel()
            await asyncio.gather(reading, lost, return_exceptions=True)
            return
        view = await reading
        taken = await adopt(view, self.stream, self.batch.journal, self.ledger, self.sharing)
        if not self.lease.holding:
            return  # lost meanwhile: what was adopted waits in state_dir, nothing was started
        self.ledger.on_count = self.sharing.quota
        self.limiter.guard()  # the last active replica may have called the API just now
        self.active, self.since = True, time.time()
        self.takeovers += 1
        metrics.takeovers.inc()
        await self.batch.activate()
        await self.intake.resume(STANDBY)
        log.info("replica_active", jobs_taken_over=taken, calls_today=self.ledger.used,
                 read_seconds=round(time.monotonic() - started, 3), **describe(view))

    async def _demote(self) -> None:
        if self.active:
            log.info("replica_standby", reason="the lease was lost: another replica may be active")
        self.active = False
        self.ledger.on_count = None
        await self.intake.pause(STANDBY, STANDBY_REASON)
        self.intake.drop_in_flight()
        await self.batch.deactivate()
