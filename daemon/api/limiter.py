"""One limiter for every call to the API's /v1: call starts at least `interval` apart.

`interval` is 1/rate plus a small margin: the margin absorbs network jitter (one request
delayed on the way, the next one not), so the server never sees two calls closer than
its limit. Waiters are served first come, first served; each sleeps until its computed
slot. Time is the event loop's monotonic clock, so wall-clock steps do not matter.
"""

from __future__ import annotations

import asyncio

DEFAULT_MARGIN = 0.03  # seconds added to 1/rate


class CallLimiter:
    def __init__(self, requests_per_second: float, *, margin: float = DEFAULT_MARGIN) -> None:
        if requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")
        self.interval = 1.0 / requests_per_second + max(0.0, margin)
        self.calls = 0  # calls admitted
        self.waited = 0.0  # seconds callers spent waiting, in total
        self._next_start = float("-inf")  # loop time before which no call may start
        # Only the waiter at the head sleeps; the others queue on the lock, which wakes
        # them in arrival order. A cancelled waiter leaves the lock and takes no slot.
        self._turn = asyncio.Lock()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def next_slot_in(self) -> float:
        """Seconds until the next call could start (0 if now), ignoring queued waiters."""
        return max(0.0, self._next_start - self._now())

    async def acquire(self) -> None:
        """Return at the moment the caller may start its call."""
        arrived = self._now()
        queued = self._turn.locked()
        async with self._turn:
            # A loop, not a single sleep: penalize() may push the slot out meanwhile,
            # and a timer may fire a hair early.
            while (delay := self._next_start - self._now()) > 0:
                queued = True
                await asyncio.sleep(delay)
            start = self._now()
            self._next_start = start + self.interval
            self.calls += 1
            if queued:  # an idle limiter adds no wait, not even a measured microsecond
                self.waited += start - arrived

    def started(self) -> None:
        """A call's request actually went out now. Slots are handed out when a call may
        start; if the event loop was busy and it left late, the next slot moves with it,
        so the server still sees a full interval between the two."""
        self._next_start = max(self._next_start, self._now() + self.interval)

    def penalize(self, seconds: float) -> None:
        """Back off: no call starts before now + seconds. Never brings the next slot closer."""
        self._next_start = max(self._next_start, self._now() + seconds)

    def guard(self) -> None:
        """No call before a full interval from now: a previous process (a replica that
        just stopped, this one before a restart) may have started a call just now."""
        self.penalize(self.interval)
