"""SQLite databases in state_dir (the standard library's: no server, shared by replicas on
one host through the file, safe across processes with WAL and a busy timeout), and the loop
that writes to one in batches."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable

PURGE_EVERY = 3600.0  # seconds between purges of what is too old to keep
GATHER_SECONDS = 0.2  # a pause after each write, so that the next writes come as one batch


class Database:
    """One connection, used from worker threads one call at a time."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._schema = schema

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
            connection.executescript(self._schema)
            self._connection = connection
        return self._connection

    def run(self, work):
        """`work(connection)` under the lock; raises sqlite3.Error and OSError as they come."""
        with self._lock:
            return work(self._connect())

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


async def write_in_batches(wake: asyncio.Event, write: Callable[[], Awaitable[None]],
                           purge: Callable[[], Awaitable[None]], clock: Callable[[], float] = time.time) -> None:
    """The supervised loop of a store whose writes are batched: each time `wake` is set,
    `write()` what is pending, `purge()` at most every PURGE_EVERY seconds (at once on the
    first write), then pause GATHER_SECONDS. Never returns."""
    last_purge = 0.0
    while True:
        await wake.wait()
        wake.clear()
        await write()
        if clock() - last_purge > PURGE_EVERY:
            last_purge = clock()
            await purge()
        await asyncio.sleep(GATHER_SECONDS)
