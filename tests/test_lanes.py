"""The two lanes in-process: interactive records go into the very next call ahead of bulk
ones, are held for pacing at most interactive_max_wait_seconds, and bulk requests share
calls in turn, so a small one is not stuck behind a huge one."""

from __future__ import annotations

import asyncio
import time

import pytest
from inprocess import running_core

from daemon.api.pacer import DAY
from daemon.emulator.settings import Faults
from daemon.constants import BULK, INTERACTIVE
from daemon.realtime.backlog import Backlog, CallKey
from daemon.realtime.schedule import plan_call

KEY = CallKey("anzsco", None, 3)


def records(n: int, prefix: str) -> list[dict]:
    return [{"recordId": f"{prefix}{i}", "occp_text": f"{prefix} clerk {i}", "tasks_text": "filing"} for i in range(n)]


async def test_an_interactive_record_rides_the_next_call_ahead_of_a_bulk_backlog(make_emulator, tmp_path):
    api = await make_emulator(requests_per_second=2.0, faults=Faults(latency=0.2))
    async with running_core(api.url, tmp_path, requests_per_second=2.0, cache=False) as core:
        bulk = core.start({"topic": "anzsco", "records": records(1800, "b")})
        while api.stats.coding_calls < 2:
            await asyncio.sleep(0.02)
        person = await core.deliver({"topic": "anzsco", "record": records(1, "p")[0]}, lane=INTERACTIVE)
        calls_when_answered = api.stats.coding_calls
        await bulk[1]
    assert core.reply(person)["status"] == "completed"
    assert calls_when_answered <= 4  # the next call (or the one already leaving), not behind 1,800 records
    assert all(n == 300 for n in api.stats.records_per_call[:-1])  # bulk filled the rest of every call


async def test_a_small_bulk_request_behind_a_huge_one_finishes_in_the_first_call(make_emulator, tmp_path):
    api = await make_emulator(requests_per_second=2.0, faults=Faults(latency=0.2))
    async with running_core(api.url, tmp_path, requests_per_second=2.0, cache=False) as core:
        huge = core.start({"topic": "anzsco", "records": records(1800, "h")})
        await asyncio.sleep(0.05)
        small = await core.deliver({"topic": "anzsco", "records": records(5, "s")})
        calls_when_answered = api.stats.coding_calls
        await huge[1]
    assert len(core.reply(small)["records"]) == 5 and calls_when_answered <= 3
    assert len(core.reply(huge[0])["records"]) == 1800


@pytest.mark.parametrize("lane, waited, expected", [(BULK, 0.0, 3600.0), (INTERACTIVE, 0.0, 2.0),
                                                    (INTERACTIVE, 1.5, 0.5), (INTERACTIVE, 5.0, 0.0)])
def test_the_pacing_wait_of_a_call_with_interactive_records_is_bounded(lane, waited, expected):
    class Owner:
        done = False

    class Pacer:
        def delay(self):
            return 3600.0

    from daemon.realtime.backlog import PendingRecord
    from daemon.request.cleaning import clean

    backlog = Backlog()
    backlog.add(KEY, [PendingRecord(Owner(), 0, clean("clerk", ""), since=100.0, lane=lane)])
    plan = plan_call(backlog, Pacer(), interactive_max_wait=2.0, now=100.0 + waited)
    assert plan.key == KEY and plan.wait == pytest.approx(expected)


async def test_interactive_requests_spend_the_burst_then_wait_at_most_their_bound(make_emulator, tmp_path):
    left = DAY - time.time() % DAY
    if left < 600:
        pytest.skip("too close to 00:00 UTC: the day's budget resets before the test ends")
    # An even pace of a call or two an hour, and room for the calls the test makes (the
    # topic list, the model, four interactive calls) so the day is never used up.
    quota = int(left / 3600) + 10
    api = await make_emulator(daily_quota={"public": quota, "partner": quota})
    async with running_core(api.url, tmp_path, daily_quota=quota, quota_burst=1.5 / quota, cache=False,
                            interactive_max_wait_seconds=0.5) as core:
        waits = []
        for i in range(4):
            began = time.monotonic()
            message = await core.deliver({"topic": "anzsco", "record": records(1, f"i{i}")[0]}, lane=INTERACTIVE)
            waits.append(time.monotonic() - began)
            assert core.reply(message)["status"] == "completed"
        bulk, task = core.start({"topic": "anzsco", "record": records(1, "b")[0]})
        await asyncio.sleep(1.5)
        assert not task.done()  # a bulk record waits for the budget (an hour)
        task.cancel()
    assert max(waits) < 0.5 + 1.0  # the bound, plus the call itself
