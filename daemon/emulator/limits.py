"""The API's throttle (calls per second) and daily quota (calls per UTC day), per client."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone

from .settings import Clock, EmulatorConfig


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


class Limits:
    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.last_start: dict[str, float] = {}
        self.calls_by_day: Counter[tuple[str, str]] = Counter()

    def quota_exceeded(self, client_id: str, tier: str) -> bool:
        quota = self.config.daily_quota.get(tier, 0)
        return quota > 0 and self.calls_by_day[(client_id, utc_day(self.clock.now()))] >= quota

    def too_soon(self, client_id: str) -> float | None:
        """None when this call starts at least 1/rate after the client's last admitted
        call (it is admitted); otherwise the shorter gap it came after, and it is refused.

        Arrival times are taken with a monotonic clock, exactly as requests reach the
        server; a refused call does not move the window.
        """
        rate = self.config.requests_per_second
        if rate <= 0:
            return None
        now = time.monotonic()
        last = self.last_start.get(client_id)
        if last is not None and now - last < 1.0 / rate:
            return now - last
        self.last_start[client_id] = now
        return None

    def count(self, client_id: str) -> None:
        self.calls_by_day[(client_id, utc_day(self.clock.now()))] += 1
