"""The result cache: what the API answered for a text, remembered in
`state_dir/cache.sqlite`, so the same text coded by the same model is never sent again.

Keyed by (topic, the concrete model id that coded it, cleaned occp_text, cleaned
tasks_text, numberOfSuggestions): a new latest model means new keys, so nothing an old
model answered is served for a request resolved to a new one. Only what a 200 answer
said is stored (its codeStatus and codes; never the text, never an `invalid` record).
Bounded: entries older than `cache_ttl_days` are not used, and beyond `cache_max_entries`
the least recently used are evicted. Replicas sharing a state_dir share it (SQLite, WAL).
Lookups and writes run in worker threads; writes are batched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Callable, NamedTuple

from ..lifecycle import Component
from ..logs import get_logger
from ..ops import metrics
from ..ops.supervisor import Supervisor
from ..store import Database, write_in_batches

TASK = "result-cache"
TOUCH_AFTER = 3600.0  # a hit refreshes its entry's last use at most this often (fewer writes)

log = get_logger("coderd.cache")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, item TEXT NOT NULL, created REAL NOT NULL,
                                    used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS answers_used ON answers (used);
"""


class CacheKey(NamedTuple):
    topic: str
    model: str
    occp_text: str
    tasks_text: str
    suggestions: int

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(json.dumps(list(self), separators=(",", ":")).encode("utf-8", "surrogatepass")).digest()


def cached_item(item: dict) -> dict:
    """What is kept of one record's answer: enough to build its RecordResult again."""
    return {"codeStatus": item.get("codeStatus"), "result": item.get("result") or []}


class ResultCache(Component):
    def __init__(self, state_dir: Path, *, max_entries: int, ttl_days: float, supervisor: Supervisor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = Database(Path(state_dir) / "cache.sqlite", SCHEMA)
        self.max_entries, self.ttl = max_entries, ttl_days * 86400.0
        self.supervisor, self.clock = supervisor, clock
        self.size = 0
        self.hits = self.misses = 0  # look-ups by this process
        self._pending: dict[bytes, str] = {}
        self._touched: list[bytes] = []
        self._write = asyncio.Event()

    async def start(self) -> None:
        try:
            self.size = await asyncio.to_thread(self.db.run, lambda c: c.execute(
                "SELECT count(*) FROM answers").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache_unreadable", error=str(exc))
        metrics.cache_size.set(self.size)
        if self.supervisor is not None:
            self.supervisor.start_task(TASK, self.keep)

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop_task(TASK)
        await self._flush()
        self.db.close()

    async def lookup(self, keys: list[CacheKey]) -> dict[CacheKey, dict]:
        """The cached answer for each key that has one (fresh enough)."""
        if not keys:
            return {}
        digests = {key.digest: key for key in keys}
        fresh_after = self.clock() - self.ttl
        try:
            rows = await asyncio.to_thread(self.db.run, lambda c: _select(c, list(digests), fresh_after))
        except (sqlite3.Error, OSError) as exc:  # a cache that cannot be read is a miss
            log.warning("cache_unreadable", error=str(exc))
            rows = []
        now, found = self.clock(), {}
        for digest, item, used in rows:
            found[digests[digest]] = json.loads(item)
            if now - used > TOUCH_AFTER:
                self._touched.append(digest)
        self.hits += len(found)
        self.misses += len(digests) - len(found)
        metrics.cache_lookups.labels("hit").inc(len(found))
        metrics.cache_lookups.labels("miss").inc(len(digests) - len(found))
        return found

    def store(self, key: CacheKey, item: dict) -> None:
        """Remember a 200 answer's item for `key` (written soon, in a batch)."""
        self._pending[key.digest] = json.dumps(cached_item(item), separators=(",", ":"))
        self._write.set()

    async def keep(self) -> None:
        """Supervised: write stored answers in batches, evict beyond the bound, purge stale."""
        await write_in_batches(self._write, self._flush, lambda: self._evict(purge=True), self.clock)

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        touched, self._touched = self._touched, []
        if not pending and not touched:
            return
        now = self.clock()
        try:
            added = await asyncio.to_thread(self.db.run, lambda c: _write(c, pending, touched, now))
        except (sqlite3.Error, OSError) as exc:  # an answer not cached costs a call later, nothing more
            log.warning("cache_not_written", error=str(exc), entries=len(pending))
            return
        self.size += added
        if self.size > self.max_entries:
            await self._evict()
        metrics.cache_size.set(self.size)

    async def _evict(self, purge: bool = False) -> None:
        excess, stale_before = max(0, self.size - self.max_entries), self.clock() - self.ttl
        try:
            removed, stale = await asyncio.to_thread(self.db.run, lambda c: _evict(c, excess, stale_before, purge))
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache_not_evicted", error=str(exc))
            return
        self.size -= removed + stale
        metrics.cache_evictions.inc(removed)
        metrics.cache_size.set(self.size)


def _select(c: sqlite3.Connection, digests: list[bytes], fresh_after: float) -> list:
    rows = []
    for start in range(0, len(digests), 500):  # SQLite's limit on bound parameters
        chunk = digests[start:start + 500]
        rows += c.execute(f"SELECT key, item, used FROM answers WHERE created > ? AND key IN "
                          f"({','.join('?' * len(chunk))})", (fresh_after, *chunk)).fetchall()
    return rows


def _write(c: sqlite3.Connection, pending: dict[bytes, str], touched: list[bytes], now: float) -> int:
    """Store answers (a stale entry coded again is replaced) and touch hits; the number of
    new entries."""
    c.execute("BEGIN")
    keys = list(pending)
    known = sum(len(c.execute(f"SELECT key FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                              chunk).fetchall())
                for chunk in (keys[i:i + 500] for i in range(0, len(keys), 500)))
    c.executemany("INSERT INTO answers (key, item, created, used) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO "
                  "UPDATE SET item = excluded.item, created = excluded.created, used = excluded.used",
                  [(digest, item, now, now) for digest, item in pending.items()])
    c.executemany("UPDATE answers SET used = ? WHERE key = ?", [(now, d) for d in touched])
    c.execute("COMMIT")
    return len(keys) - known


def _evict(c: sqlite3.Connection, excess: int, stale_before: float, purge: bool) -> tuple[int, int]:
    c.execute("BEGIN")
    stale = c.execute("DELETE FROM answers WHERE created <= ?", (stale_before,)).rowcount if purge else 0
    removed = 0
    if excess > 0:  # the least recently used go first
        removed = c.execute("DELETE FROM answers WHERE key IN (SELECT key FROM answers ORDER BY used LIMIT ?)",
                            (excess,)).rowcount
    c.execute("COMMIT")
    return removed, stale
