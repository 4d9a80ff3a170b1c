"""A small in-memory history for the console's charts, fed by events (each coding call),
never by polling: calls and records per minute over the last hour, and today's quota
burn-down (the ledger's count sampled at each call, one point per 5 minutes since
00:00 UTC, started again when the UTC day changes). Module-level, like the metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

MINUTES = 60  # the per-minute bins kept: this minute and the 59 before it
QUOTA_STEP = 300  # one burn-down point per this many seconds of the UTC day
DAY = 86400


class History:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._minutes: dict[int, list[int]] = {}  # epoch minute -> [calls, records]
        self._quota_used: Callable[[], int] | None = None
        self._day = -1  # epoch day of the burn-down below
        self._burn: dict[int, tuple[float, int]] = {}  # 5-minute slot of the day -> (epoch, used)

    def bind(self, quota_used: Callable[[], int]) -> None:
        """Where today's used calls are read at each call (the quota ledger, shared by the
        replicas on one state_dir). A new source starts a new burn-down, sampled at once."""
        self._quota_used, self._day, self._burn = quota_used, -1, {}
        self._sample_quota(self.clock())

    def record_call(self, records: int) -> None:
        """A coding call carrying `records` records was made."""
        now = self.clock()
        minute = int(now // 60)
        counts = self._minutes.setdefault(minute, [0, 0])
        counts[0] += 1
        counts[1] += records
        for old in [m for m in self._minutes if m <= minute - MINUTES]:
            del self._minutes[old]
        self._sample_quota(now)

    def _sample_quota(self, now: float) -> None:
        if self._quota_used is None:
            return
        try:
            used = int(self._quota_used())
        except Exception:  # noqa: BLE001 - a chart must never fail a coding call
            return
        self._roll(now)
        self._burn[int(now % DAY // QUOTA_STEP)] = (round(now, 1), used)

    def _roll(self, now: float) -> None:
        if int(now // DAY) != self._day:
            self._day, self._burn = int(now // DAY), {}

    def per_minute(self) -> list[list[int]]:
        """[[minute's epoch, calls, records], ...] for the last hour, oldest first, zeros included."""
        minute = int(self.clock() // 60)
        return [[m * 60, *self._minutes.get(m, (0, 0))] for m in range(minute - MINUTES + 1, minute + 1)]

    def burn_down(self) -> list[list[float]]:
        """Today's [[epoch, used], ...]: the last sample of each 5 minutes, in order."""
        self._roll(self.clock())
        return [list(self._burn[slot]) for slot in sorted(self._burn)]

    def document(self, daily_quota: int, used_now: int | None = None) -> dict:
        """The console's history: per-minute calls and records, and the burn-down with its
        even-pace line (daily_quota at 00:00 UTC down to 0 at 24:00); `used_now` ends the
        burn-down at this instant."""
        now = self.clock()
        start = now - now % DAY
        points = self.burn_down()
        if used_now is not None:
            points.append([round(now, 1), used_now])
        return {"now": round(now, 1), "minutes": self.per_minute(),
                "quota": {"day_start": start, "day_end": start + DAY, "daily_quota": daily_quota,
                          "used": points, "even_pace": [[start, daily_quota], [start + DAY, 0]]}}


history = History()
bind = history.bind
record_call = history.record_call
document = history.document
