"""Which call goes next, and when: the real-time worker's one scheduling rule, a plain
function so that tests and the day simulation (bench/bench_day.py) run the same rule.

A key with a full call's worth of distinct texts goes at once: a full call is never held
for pacing, it already carries the most a call can. Otherwise the key with interactive
records waiting goes, else the oldest, after the wait the quota pacer asks for (0 while
the day's budget is ahead of the even pace) — but an interactive record waits for the
budget at most `interactive_max_wait` seconds from its arrival: the burst is for it.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol

from ..constants import MAX_RECORDS_PER_CALL
from .backlog import Backlog, CallKey


class Pacer(Protocol):
    def delay(self) -> float: ...


class Plan(NamedTuple):
    key: CallKey
    wait: float  # seconds the call must wait for the day's budget (0: go now; inf: not today)
    full: bool


def plan_call(backlog: Backlog, pacer: Pacer | None, limit: int = MAX_RECORDS_PER_CALL, *,
              interactive_max_wait: float = 2.0, now: float | None = None) -> Plan | None:
    """The next call's key and its pacing wait; None when nothing waits."""
    full = backlog.full_key(limit)
    if full is not None:
        return Plan(full, 0.0, True)
    key = backlog.peek_key()
    if key is None:
        return None
    wait = pacer.delay() if pacer is not None else 0.0
    urgent = backlog.oldest_interactive()
    if urgent is not None and wait > 0:
        now = time.monotonic() if now is None else now
        wait = min(wait, max(0.0, urgent.since + interactive_max_wait - now))
    return Plan(key, wait, False)
