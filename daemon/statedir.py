"""Whether `state_dir` can be written, now.

Every durable write coderd needs before acting (the quota count before a call, a batch
job's journal before its request is acked, a large body's spool) goes to state_dir. When
one fails (the disk is full, the file system went read-only), the write's owner reports
it here and raises StateNotWritable instead of acting without its record. Meanwhile
/readyz says why, the intake stops taking requests, the real-time worker hands back what
waits, and a probe tries a small write every few seconds: the first that succeeds ends
it, and coding resumes by itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .durable import write_atomically
from .lifecycle import Component
from .logs import get_logger
from .ops import metrics
from .ops.supervisor import Supervisor

PROBE_INTERVAL = 5.0
TASK = "state-dir-probe"

log = get_logger("coderd.state")


class StateNotWritable(Exception):
    """A write to state_dir failed: whatever needed it was not done."""


class StateDir(Component):
    def __init__(self, path: Path, supervisor: Supervisor | None = None) -> None:
        self.path, self.supervisor = Path(path), supervisor
        self.problem: str | None = None
        self.failures = 0  # writes that failed, since start
        self._writable = asyncio.Event()
        self._writable.set()
        self._unwritable = asyncio.Event()

    async def start(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start_task(TASK, self.watch)

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop_task(TASK)

    @property
    def writable(self) -> bool:
        return self.problem is None

    def failed(self, exc: OSError, what: str) -> StateNotWritable:
        """Report a failed write; returns the exception for its owner to raise."""
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        self.failures += 1
        metrics.state_dir_errors.inc()
        if self.problem is None:
            log.error("state_dir_not_writable", path=str(self.path), what=what, reason=reason)
        self.problem = f"state_dir not writable: {reason} (writing {what})"
        self._writable.clear()
        self._unwritable.set()
        return StateNotWritable(self.problem)

    async def wait_writable(self) -> None:
        await self._writable.wait()

    async def wait_unwritable(self) -> None:
        await self._unwritable.wait()

    def probe(self) -> bool:
        """Try a small durable write; True (and the problem cleared) when it works."""
        try:
            write_atomically(self.path / ".coderd-probe", "ok")
        except OSError:
            return False
        if self.problem is not None:
            log.info("state_dir_writable_again", path=str(self.path))
        self.problem = None
        self._unwritable.clear()
        self._writable.set()
        return True

    async def watch(self) -> None:
        """Supervised: while state_dir cannot be written, probe it until it can."""
        while True:
            await self._unwritable.wait()
            while not await asyncio.to_thread(self.probe):
                await asyncio.sleep(PROBE_INTERVAL)
