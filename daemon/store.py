"""SQLite databases in state_dir (the standard library's: no server, shared by replicas on
one host through the file, safe across processes with WAL and a busy timeout)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


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
