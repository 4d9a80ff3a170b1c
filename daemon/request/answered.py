"""Requests already answered: the identity (correlation_id and body digest) of every
request whose reply the broker confirmed, kept 24 hours in `state_dir/answered.sqlite`.

When a connection is cut after a reply was confirmed but before its request was acked,
the broker delivers the request again: it is acked at once, not coded (nor answered)
again. Replies in flight at the cut (not yet confirmed) are still answered twice: delivery
is at-least-once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

from ..lifecycle import Component
from ..logs import get_logger
from ..ops.supervisor import Supervisor
from ..store import Database, write_in_batches

KEEP_SECONDS = 86400.0
RECENT = 100_000  # identities also kept in memory (the cut's redeliveries come at once)
TASK = "answered-log"

log = get_logger("coderd.answered")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answered (identity TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS answered_at ON answered (at);
"""


class AnsweredLog(Component):
    def __init__(self, state_dir: Path, supervisor: Supervisor | None = None) -> None:
        self.db = Database(Path(state_dir) / "answered.sqlite", SCHEMA)
        self.supervisor = supervisor
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._pending: list[tuple[str, float]] = []
        self._flush = asyncio.Event()

    async def start(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start_task(TASK, self.keep)

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop_task(TASK)
        await self._write()
        self.db.close()

    def record(self, identity: str) -> None:
        """The reply to `identity` is confirmed (its request is about to be acked)."""
        now = time.time()
        self._recent[identity] = now
        self._recent.move_to_end(identity)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        self._pending.append((identity, now))
        self._flush.set()

    async def answered(self, identity: str) -> bool:
        at = self._recent.get(identity)
        if at is None:
            try:
                row = await asyncio.to_thread(self.db.run, lambda c: c.execute(
                    "SELECT at FROM answered WHERE identity = ?", (identity,)).fetchone())
            except (sqlite3.Error, OSError) as exc:
                log.warning("answered_log_unreadable", error=str(exc))
                return False  # at worst a duplicate reply: never a lost one
            at = row[0] if row else None
        return at is not None and time.time() - at < KEEP_SECONDS

    async def keep(self) -> None:
        """Supervised: write recorded identities in batches, and forget old ones hourly."""
        await write_in_batches(self._flush, self._write, self._forget_old)

    async def _forget_old(self) -> None:
        # Not guarded: a failed purge ends the task, and the supervisor restarts it.
        await asyncio.to_thread(self.db.run, lambda c: c.execute(
            "DELETE FROM answered WHERE at < ?", (time.time() - KEEP_SECONDS,)))

    async def _write(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.db.run, lambda c: c.executemany(
                "INSERT OR REPLACE INTO answered (identity, at) VALUES (?, ?)", batch))
        except (sqlite3.Error, OSError) as exc:  # in memory still: this process will not re-code them
            log.warning("answered_log_not_written", error=str(exc), identities=len(batch))
