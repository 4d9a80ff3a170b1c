"""The daily call ledger: persisted per UTC day, reset at midnight UTC, robust to damage."""

from __future__ import annotations

import asyncio
import calendar
import json
import time

from daemon.api.quota import QuotaLedger

NOON = calendar.timegm((2025, 7, 1, 12, 0, 0))  # 2025-07-01 12:00:00 UTC
MIDNIGHT = calendar.timegm((2025, 7, 2, 0, 0, 0))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_persist_across_instances(tmp_path):
    ledger = QuotaLedger(tmp_path, 10, clock=FakeClock(NOON))
    assert (ledger.used, ledger.remaining, ledger.exhausted) == (0, 10, False)
    ledger.count()
    ledger.count(3)
    assert (ledger.used, ledger.remaining) == (4, 6)
    assert json.loads((tmp_path / "quota.json").read_text()) == {"day": "2025-07-01", "used": 4}

    restarted = QuotaLedger(tmp_path, 10, clock=FakeClock(NOON + 60))
    assert (restarted.used, restarted.remaining) == (4, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["quota.json"]  # no temporary files left behind


def test_state_dir_is_created(tmp_path):
    ledger = QuotaLedger(tmp_path / "var" / "state", 10, clock=FakeClock(NOON))
    ledger.count()
    assert QuotaLedger(tmp_path / "var" / "state", 10, clock=FakeClock(NOON)).used == 1


def test_two_ledgers_on_one_state_dir_do_not_lose_counts(tmp_path):
    """A replica taking over reads what the previous one counted after it started."""
    first = QuotaLedger(tmp_path, 10, clock=FakeClock(NOON))
    second = QuotaLedger(tmp_path, 10, clock=FakeClock(NOON))
    first.count(2)
    second.count()
    assert second.used == 3
    assert first.used == 3


def test_reset_at_utc_day_change(tmp_path):
    clock = FakeClock(MIDNIGHT - 1)
    ledger = QuotaLedger(tmp_path, 5, clock=clock)
    ledger.count(5)
    assert ledger.exhausted and ledger.remaining == 0
    clock.now = MIDNIGHT
    assert (ledger.used, ledger.remaining, ledger.exhausted) == (0, 5, False)
    ledger.count()
    assert json.loads((tmp_path / "quota.json").read_text()) == {"day": "2025-07-02", "used": 1}


def test_file_from_an_earlier_day_means_nothing_used_today(tmp_path):
    QuotaLedger(tmp_path, 5, clock=FakeClock(NOON)).count(4)
    assert QuotaLedger(tmp_path, 5, clock=FakeClock(NOON + 86400)).used == 0


def test_mark_exhausted_persists_until_the_next_day(tmp_path):
    clock = FakeClock(NOON)
    ledger = QuotaLedger(tmp_path, 1000, clock=clock)
    ledger.count(7)
    ledger.mark_exhausted()
    assert ledger.exhausted and ledger.remaining == 0 and ledger.used == 1000
    assert QuotaLedger(tmp_path, 1000, clock=clock).exhausted  # a restart does not forget
    clock.now = MIDNIGHT + 1
    assert not ledger.exhausted and ledger.used == 0


def test_corrupt_file_recovers_as_zero(tmp_path):
    path = tmp_path / "quota.json"
    for damage in ("{not json", "[1, 2]", '{"day": "2025-07-01", "used": "many"}', '{"day": "2025-07-01"}', ""):
        path.write_text(damage)
        ledger = QuotaLedger(tmp_path, 10, clock=FakeClock(NOON))
        assert ledger.used == 0, damage
        ledger.count(2)
        assert json.loads(path.read_text()) == {"day": "2025-07-01", "used": 2}


def test_seconds_until_reset_around_midnight(tmp_path):
    clock = FakeClock(NOON)
    ledger = QuotaLedger(tmp_path, 10, clock=clock)
    assert ledger.seconds_until_reset() == 12 * 3600
    clock.now = MIDNIGHT - 0.25
    assert abs(ledger.seconds_until_reset() - 0.25) < 1e-6
    clock.now = MIDNIGHT
    assert ledger.seconds_until_reset() == 86400
    clock.now = MIDNIGHT + 1
    assert ledger.seconds_until_reset() == 86399


async def test_wait_for_reset_returns_once_the_utc_day_changed(tmp_path):
    started = time.monotonic()
    clock = lambda: MIDNIGHT - 0.1 + (time.monotonic() - started)  # noqa: E731 - flows like real time
    ledger = QuotaLedger(tmp_path, 1, clock=clock)
    ledger.mark_exhausted()
    await asyncio.wait_for(ledger.wait_for_reset(), timeout=5)
    assert clock() >= MIDNIGHT
    assert not ledger.exhausted
