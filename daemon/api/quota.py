"""The daily call ledger: calls to the API's /v1 per UTC day, kept in state_dir so a
restart (or a replica taking over the same state_dir) knows what today has used."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Callable

from ..durable import write_atomically
from ..statedir import StateDir

SECONDS_PER_DAY = 86400  # UTC days are exactly this long in epoch time (no leap seconds)
RESET_SLACK = 0.05  # sleep just past midnight, so the re-check sees the new day
MAX_SLEEP = 300.0  # re-read the wall clock at least this often (it may be stepped)


def utc_day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


class QuotaLedger:
    def __init__(self, state_dir: Path, daily_quota: int, *, clock: Callable[[], float] = time.time,
                 state: StateDir | None = None) -> None:
        self.path = Path(state_dir) / "quota.json"
        self.state = state  # told when the ledger cannot be written
        self.daily_quota = daily_quota
        self.clock = clock
        self._day, self._used = utc_day(clock()), 0
        self._spent = asyncio.Event()  # set whenever the day is seen to be used up
        self.on_count: Callable[[str, int], None] | None = None  # told each new count (replica/sharing.py)
        self._merge_saved()

    def _merge_saved(self) -> None:
        """Take the saved count for today if it is higher: another process sharing the
        state_dir (the replica we took over from) may have counted calls since we read it."""
        self._roll()
        try:
            saved = json.loads(self.path.read_text())
            if isinstance(saved, dict) and saved.get("day") == self._day:
                self._used = max(self._used, int(saved["used"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no ledger yet, or a damaged one: our own count stands

    def _roll(self) -> None:
        today = utc_day(self.clock())
        if today != self._day:
            self._day, self._used = today, 0

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps({"day": self._day, "used": self._used}))

    @property
    def used(self) -> int:
        """Calls made today (UTC)."""
        self._merge_saved()
        return self._used

    @property
    def remaining(self) -> int:
        return max(0, self.daily_quota - self.used)

    @property
    def exhausted(self) -> bool:
        if self.used < self.daily_quota:
            return False
        self._spent.set()
        return True

    async def wait_exhausted(self) -> None:
        """Return once today's calls are seen to be used up (by us, a replica, or the API)."""
        while not self.exhausted:
            self._spent.clear()
            await self._spent.wait()

    def count(self, calls: int = 1) -> None:
        """Calls are about to be made: count them and persist at once. StateNotWritable
        (nothing counted) when the ledger cannot be written: then the calls must not be made."""
        self._merge_saved()
        self._used += max(0, calls)
        try:
            self._save()
        except OSError as exc:
            self._used -= max(0, calls)
            if self.state is None:
                raise
            raise self.state.failed(exc, "the quota ledger") from None
        self._told()
        if self._used >= self.daily_quota:
            self._spent.set()

    def _told(self) -> None:
        if self.on_count is not None:
            self.on_count(self._day, self._used)

    def adopt(self, day: str, used: int) -> None:
        """The count another replica kept (read back from the state stream): taken if it is
        today's and higher than ours."""
        self._merge_saved()
        if day != self._day or used <= self._used:
            return
        self._used = used
        try:
            self._save()
        except OSError as exc:  # known in memory; written with the next count
            if self.state is not None:
                self.state.failed(exc, "the quota ledger")
        if self._used >= self.daily_quota:
            self._spent.set()

    def mark_exhausted(self) -> None:
        """The API said 429 "Limit Exceeded": whatever we counted, today is used up."""
        self._merge_saved()
        self._used = max(self._used, self.daily_quota)
        self._spent.set()
        self._told()
        try:
            self._save()
        except OSError as exc:  # known in memory: this process stops calling anyway
            if self.state is not None:
                self.state.failed(exc, "the quota ledger")

    def seconds_until_reset(self) -> float:
        """Seconds until the next 00:00 UTC, when the API's quota starts again."""
        return SECONDS_PER_DAY - self.clock() % SECONDS_PER_DAY

    async def wait_for_reset(self) -> None:
        """Sleep until the UTC day changes."""
        day = utc_day(self.clock())
        while utc_day(self.clock()) == day:
            await asyncio.sleep(min(self.seconds_until_reset() + RESET_SLACK, MAX_SLEEP))
