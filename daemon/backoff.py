"""The one back-off policy: exponential, capped, with jitter by default.

Used wherever coderd waits before trying again (a failed coding call, a batch status, a
token request, a crashed task): the same shape everywhere, tuned by `base` and `cap`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0  # the first delay
    cap: float = 30.0  # no delay is longer
    jitter: bool = True  # each delay drawn from [delay/2, delay], so retries do not march in step

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt >= 1)."""
        delay = min(self.cap, self.base * 2.0 ** (max(1, attempt) - 1))
        return random.uniform(delay / 2, delay) if self.jitter else delay
