"""The batch manager: runs journaled jobs through the API's asynchronous batch service
(each job by runner.py), in whichever process holds `state_dir/batch.lock`; a replica
sharing the state_dir takes over when that process dies, and resumes the jobs."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading

import aiohttp

from ..api.cache import ResultCache
from ..api.catalog import ModelCatalog
from ..api.client import ApiCaller
from ..config import Settings
from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervisor
from ..request.finish import Finisher
from ..statedir import StateDir
from .journal import Job, Journal
from .runner import JobRunner

TASK = "batch-manager"

log = get_logger("coderd.batch")


class BatchManager(Component):
    def __init__(self, settings: Settings, caller: ApiCaller, catalog: ModelCatalog,
                 session: aiohttp.ClientSession, finisher: Finisher, supervisor: Supervisor, state: StateDir,
                 cache: ResultCache | None = None) -> None:
        self.settings, self.supervisor = settings, supervisor
        self.journal = Journal(settings.state_dir, state)
        self.runner = JobRunner(settings, caller, catalog, session, finisher, self.journal, state, cache)
        self.running: dict[str, asyncio.Task] = {}  # strong references to job tasks
        self._lock_fd: int | None = None
        self._wake = asyncio.Event()

    # --- which process runs jobs --------------------------------------------------

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd is not None

    async def start(self) -> None:
        self.journal.root.mkdir(parents=True, exist_ok=True)
        self.supervisor.start_task(TASK, self.run)

    async def stop(self) -> None:
        await self.supervisor.stop_task(TASK)
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()  # every phase is journaled: the next start resumes it
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self) -> None:
        """Supervised: take the batch lock, then run every journaled job; scan again when
        a job is submitted, and every batch_poll_seconds for jobs journaled by a replica
        (one that became the active consumer while this process held the lock)."""
        if not self.holds_lock:
            await self._take_lock()
            self.journal.remove_orphans()
        while True:
            self._wake.clear()
            for job in self.journal.jobs():
                self._spawn(job)
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.batch_poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def _take_lock(self) -> None:
        fd = os.open(self.journal.root.parent / "batch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("batch_standby", reason="another coderd process runs the batch jobs in this state_dir")
            # A blocking flock returns when the holder exits. It runs in a daemon thread, not
            # the loop's executor, so a shutdown never waits for it.
            loop, acquired = asyncio.get_running_loop(), asyncio.Event()
            threading.Thread(target=lambda: (fcntl.flock(fd, fcntl.LOCK_EX),
                                             loop.call_soon_threadsafe(acquired.set)),
                             name="batch-lock", daemon=True).start()
            await acquired.wait()
        self._lock_fd = fd

    def submit(self, job: Job) -> None:
        """Run a job that has just been journaled."""
        if self.holds_lock:
            self._spawn(job)

    def _spawn(self, job: Job) -> None:
        if job.job_id in self.running:
            return
        task = asyncio.get_running_loop().create_task(self.runner.run(job), name=f"batch-{job.job_id}")
        self.running[job.job_id] = task
        task.add_done_callback(lambda _t: self.running.pop(job.job_id, None))
