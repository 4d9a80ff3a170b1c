"""Quota pacing by its properties: the day's budget lasts until 00:00 UTC, a quiet day
adds no latency, full calls are never held and never hold later partial calls for long."""

from __future__ import annotations

import calendar
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.api.pacer import DAY, QuotaPacer
from daemon.api.quota import QuotaLedger

MIDNIGHT = calendar.timegm((2026, 12, 1, 0, 0, 0))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget(quota: int, burst: float, at: float, used: int = 0) -> tuple[QuotaPacer, QuotaLedger, Clock]:
    clock = Clock(MIDNIGHT + at)
    ledger = QuotaLedger(Path(tempfile.mkdtemp()), quota, clock=clock)
    ledger.count(used)
    return QuotaPacer(ledger, burst, clock=clock), ledger, clock


quotas = st.sampled_from([1000, 10_000]) | st.integers(50, 20_000)
bursts = st.floats(0.0, 0.2)
times = st.floats(0, DAY - 3600)


@given(quotas, bursts, times, st.floats(0, 1))
@settings(max_examples=200, deadline=None)
def test_a_quiet_day_adds_no_latency(quota, burst, at, share):
    """Spent no faster than the even line (and a full bucket): a lone call goes at once."""
    pacer, _, _ = budget(quota, burst, at, used=int(share * quota * at / DAY))
    assert pacer.delay() == 0


@given(st.sampled_from([1000]) | st.integers(50, 3000), bursts, times, st.floats(0, 1))
@settings(max_examples=12, deadline=None)
def test_steady_demand_spends_the_day_evenly_and_not_before_midnight(quota, burst, at, share):
    """Partial calls wanted all the time, from any point of the day with any part spent:
    the calls never go faster than the straight line to 00:00 plus the burst, never use the
    day up before 00:00 (the last call is kept back), and leave less than a burst unspent (and the few calls that fall due at
    00:00 itself)."""
    used0 = int(share * quota)
    pacer, ledger, clock = budget(quota, burst, at, used=used0)
    start, left0 = clock.now, ledger.seconds_until_reset()
    calls = 0
    while ledger.seconds_until_reset() > 1 and not ledger.exhausted:
        delay = pacer.delay()
        if delay > 0:
            if clock.now + delay >= MIDNIGHT + DAY:
                break
            clock.now += delay
            continue
        ledger.count(1)
        calls += 1
        line = (quota - used0) * (clock.now - start) / left0  # the straight line to 00:00
        assert calls <= line + pacer.capacity + 1
        clock.now += 1.0  # the rate limit
    assert ledger.used < quota or used0 >= quota  # partial calls never use the day up before 00:00
    assert quota - ledger.used <= pacer.capacity + 3


@given(quotas, bursts, times, st.integers(1, 700))
@settings(max_examples=25, deadline=None)
def test_full_calls_never_put_partial_calls_in_debt(quota, burst, at, full_calls):
    """A burst of full calls (never held) leaves partial calls at most one even-pace
    interval to wait: the calls it spent already lower the pace."""
    pacer, ledger, clock = budget(quota, burst, at)
    for _ in range(min(full_calls, quota - 2)):
        ledger.count(1)
        clock.now += 1.0
    assert pacer.delay() <= 1 / pacer.pace() + 1e-6


@given(quotas, bursts, times, st.integers(0, 100))
@settings(max_examples=200, deadline=None)
def test_calls_anywhere_count_against_the_bucket(quota, burst, at, elsewhere):
    """Calls the pacer did not see (catalogue look-ups, a replica's) take tokens too."""
    pacer, ledger, _ = budget(quota, burst, at)
    before = pacer.snapshot()["tokens"]
    ledger.count(min(elsewhere, quota))
    assert pacer.snapshot()["tokens"] == max(0.0, round(before - min(elsewhere, quota), 2))


def test_a_new_day_brings_a_full_bucket():
    pacer, ledger, clock = budget(1000, 0.05, DAY - 120)
    ledger.count(999)
    while pacer.delay() == 0 and not ledger.exhausted:
        ledger.count(1)
    assert pacer.delay() > 0 or ledger.exhausted
    clock.now = MIDNIGHT + DAY + 1
    assert pacer.delay() == 0 and pacer.snapshot()["tokens"] == pacer.capacity
