"""The active replica's writes to the state stream: what a standby on another host needs
to carry on — each batch job's journal entries and inline records, the cached answers it
did not upload, and the day's call count.

A job entry is appended (and confirmed) before the step it records goes on, like the
local journal; the call count is written behind (the latest count, coalesced), so at a
kill the next replica may count a few calls fewer than were made: those in flight.
`NoSharing` stands in where there is no broker (the in-process core, one-off tools).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

from ..batch.cached import CACHED_NAME
from ..batch.journal import Job
from ..broker.statestream import StateStream
from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervisor
from .entries import CACHED, DONE, INPUT, JOB, QUOTA, chunks

RETRY_AFTER = 1.0  # seconds before a failed call-count write is tried again

log = get_logger("coderd.replica")


class SharingFailed(Exception):
    """The state stream did not take an entry (the broker is out of reach)."""


class NoSharing(Component):
    async def job(self, job: Job) -> None: ...

    async def job_created(self, job: Job, directory: Path) -> None: ...

    async def job_cached(self, job: Job, directory: Path) -> None: ...

    async def job_done(self, job: Job) -> None: ...

    def quota(self, day: str, used: int) -> None: ...


class StreamSharing(NoSharing):
    def __init__(self, stream: StateStream, supervisor: Supervisor) -> None:
        self.stream, self.supervisor = stream, supervisor
        self._quota: tuple[str, int] | None = None
        self._quota_changed = asyncio.Event()

    async def start(self) -> None:
        self.supervisor.start_task("quota-sharing", self._share_quota)

    async def stop(self) -> None:
        await self.supervisor.stop_task("quota-sharing")

    async def _append(self, kind: str, body: bytes = b"", **headers) -> None:
        try:
            await self.stream.append(kind, body, **headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the link raised, the entry is not there
            raise SharingFailed(f"the state stream did not take a {kind} entry ({type(exc).__name__})") from None

    async def job(self, job: Job) -> None:
        await self._append(JOB, json.dumps(asdict(job)).encode(), job_id=job.job_id)

    async def job_created(self, job: Job, directory: Path) -> None:
        """The job's inline records (if any), then its first entry."""
        await self._file(INPUT, job, directory / "request.jsonl")
        await self.job(job)

    async def job_cached(self, job: Job, directory: Path) -> None:
        await self._file(CACHED, job, directory / CACHED_NAME)

    async def job_done(self, job: Job) -> None:
        await self._append(DONE, job_id=job.job_id)

    async def _file(self, kind: str, job: Job, path: Path) -> None:
        try:
            source = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            return  # a file job's input is in inbox_dir; a job without cached answers has none
        try:
            pieces = chunks(source)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                seq, data = piece
                await self._append(kind, data, job_id=job.job_id, seq=seq)
        finally:
            await asyncio.to_thread(source.close)

    def quota(self, day: str, used: int) -> None:
        """The ledger counted calls: write the new count behind."""
        self._quota = (day, used)
        self._quota_changed.set()

    async def _share_quota(self) -> None:
        """Supervised: append the latest call count whenever it changes."""
        while True:
            await self._quota_changed.wait()
            self._quota_changed.clear()
            day, used = self._quota
            try:
                await self._append(QUOTA, json.dumps({"day": day, "used": used}).encode())
            except SharingFailed as exc:
                log.debug("quota_not_shared", error=str(exc))
                self._quota_changed.set()  # tried again (the latest count) once the link is back
                await asyncio.sleep(RETRY_AFTER)
