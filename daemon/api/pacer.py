"""Quota pacing: the day's remaining calls spread so they last until 00:00 UTC, like an ad
server budgets a day's spend.

A token bucket. Tokens accrue at the even pace, `remaining calls / seconds until 00:00
UTC` (recomputed all the time, so the pace corrects itself), up to a burst allowance of
`quota_burst × daily_quota` tokens; the bucket starts full. A partial call (fewer than 300
records) takes a token, and waits for one when there is none: meanwhile its records wait
and the next call carries all of them. A full call is never held: it takes its token even
down to an empty bucket, since no call can carry more; the calls it spends lower the even
pace for the rest of the day, which is all the correction they need. The bucket never
holds the day's last call, so partial calls alone never use the day up before 00:00
(only full calls can: then the load truly exceeds the quota). Every call
to /v1 is counted against the bucket through the quota ledger, so topic look-ups and
batch status polls are in the same budget, and so are other replicas' calls on a shared
state_dir. `quota_burst = 1` (the whole day's quota as a burst) turns pacing off.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from .quota import QuotaLedger

DAY = 86400.0


class QuotaPacer:
    def __init__(self, ledger: QuotaLedger, burst: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.clock = ledger, clock
        self.capacity = max(1.0, burst * ledger.daily_quota)
        self.enabled = burst < 1.0  # a burst of the whole day is no pacing at all
        self.tokens = self.capacity
        self._day = self._today()
        self._at = clock()
        self._used = ledger.used

    def _today(self) -> int:
        return int(self.clock() // DAY)

    def pace(self) -> float:
        """The even pace: calls a second that would spend what is left by 00:00 UTC."""
        return self.ledger.remaining / max(1.0, self.ledger.seconds_until_reset())

    def _refresh(self) -> None:
        now, used = self.clock(), self.ledger.used
        if self._today() != self._day:  # a new day: a new budget, and a full bucket
            self._day, self.tokens = self._today(), self.capacity
        else:
            self.tokens = min(self.capacity, self.tokens + self.pace() * max(0.0, now - self._at))
            # Calls made since (ours, the catalog's, a replica's) take their tokens, but the
            # bucket is never in debt: the calls already lower the pace (fewer remaining),
            # and charging them again as debt would hold partial calls for hours after a
            # burst of full calls.
            self.tokens = max(0.0, self.tokens - max(0, used - self._used))
        # The day's last call is never a partial call's to spend early: what arrives in the
        # last minutes then waits for the even pace, and the quota is never used up (and
        # consuming never paused) before 00:00 by partial calls.
        self.tokens = min(self.tokens, max(0.0, self.ledger.daily_quota - used - 1))
        self._at, self._used = now, used

    def delay(self) -> float:
        """Seconds until a partial call may go (0: now; inf: not today)."""
        if not self.enabled:
            return 0.0
        self._refresh()
        if self.tokens >= 1.0:
            return 0.0
        pace = self.pace()
        return math.inf if pace <= 0 else (1.0 - self.tokens) / pace

    def snapshot(self) -> dict:
        """The budget, for /readyz and /metrics."""
        self._refresh()
        left = self.ledger.seconds_until_reset()
        return {"pacing": self.enabled, "tokens": round(self.tokens, 2), "burst": round(self.capacity, 2),
                "pace_calls_per_hour": round(self.pace() * 3600, 2),
                "even_pace_remaining": round(self.ledger.daily_quota * left / DAY, 1),
                "pacing_wait_seconds": round(min(self.delay(), left), 1)}
