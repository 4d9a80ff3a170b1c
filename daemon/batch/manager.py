"""The batch manager: runs journaled jobs through the API's asynchronous batch service
(each job by runner.py) while this replica is the active one (it holds the lease,
broker/lease.py); when it stops being active its jobs are cancelled — every phase is
journaled, and the replica that takes over resumes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from ..api.cache import ResultCache
from ..api.catalog import ModelCatalog
from ..api.client import ApiCaller
from ..config import Settings
from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervisor
from ..replica.sharing import NoSharing
from ..request.finish import Finisher
from ..statedir import StateDir
from .journal import Job, Journal
from .runner import JobRunner

TASK = "batch-manager"

log = get_logger("coderd.batch")


class BatchManager(Component):
    def __init__(self, settings: Settings, caller: ApiCaller, catalog: ModelCatalog,
                 session: aiohttp.ClientSession, finisher: Finisher, supervisor: Supervisor, state: StateDir,
                 cache: ResultCache | None = None, sharing: NoSharing | None = None, *, active: bool = True) -> None:
        self.settings, self.supervisor = settings, supervisor
        self.sharing = sharing or NoSharing()
        self.journal = Journal(settings.state_dir, state)
        self.runner = JobRunner(settings, caller, catalog, session, finisher, self.journal, state, cache,
                                self.sharing)
        self.running: dict[str, asyncio.Task] = {}  # strong references to job tasks
        self.active = asyncio.Event()  # this replica runs the jobs (replica/role.py says when)
        if active:
            self.active.set()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self.journal.root.mkdir(parents=True, exist_ok=True)
        self.supervisor.start_task(TASK, self.run)

    async def stop(self) -> None:
        await self.supervisor.stop_task(TASK)
        await self._cancel_jobs()

    async def activate(self) -> None:
        self.active.set()

    async def deactivate(self) -> None:
        """Another replica is (or may be) active now: stop every job here at once."""
        self.active.clear()
        self._wake.set()
        await self._cancel_jobs()

    async def _cancel_jobs(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()  # every phase is journaled: whoever runs jobs next resumes it
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        """Supervised: while active, run every journaled job; scan again when a job is
        submitted, and every batch_poll_seconds."""
        while True:
            await self.active.wait()
            self.journal.remove_orphans()
            while self.active.is_set():
                self._wake.clear()
                for job in self.journal.jobs():
                    self._spawn(job)
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.batch_poll_seconds)
                except asyncio.TimeoutError:
                    pass

    async def create(self, job: Job, inline_records: list | None = None, records_file: Path | None = None) -> None:
        """Journal a new job (its records too) and share it; after this its request may be
        acked. Shared again when its request comes again: the first sharing may have failed."""
        await asyncio.to_thread(self.journal.create, job, inline_records, records_file)
        await self.sharing.job_created(job, self.journal.directory(job))

    def submit(self, job: Job) -> None:
        """Run a job that has just been journaled."""
        if self.active.is_set():
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        if job.job_id in self.running:
            return
        task = asyncio.get_running_loop().create_task(self.runner.run(job), name=f"batch-{job.job_id}")
        self.running[job.job_id] = task
        task.add_done_callback(lambda _t: self.running.pop(job.job_id, None))
