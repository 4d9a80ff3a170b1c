"""The two lanes end to end: the interactive queue is declared like the request queue,
its requests are answered ahead of a bulk backlog, and a kill -9 with both lanes busy
loses nothing. The rules (order in a call, fair share, pacing bounds) are tested
in-process (test_lanes.py, test_backlog.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import quiet_config

from daemon.api.pacer import DAY
from daemon.broker.connection import request_queue_arguments
from daemon.emulator import ThreadedEmulatorServer as EmulatorServer


def record(prefix: str, i: int) -> dict:
    return {"recordId": f"{prefix}{i}", "occp_text": f"{prefix} fitter {i}", "tasks_text": "fitting pipes"}


async def test_the_interactive_queue_is_declared_like_the_request_queue_and_answered(coderd, broker):
    async with EmulatorServer(quiet_config(requests_per_second=20)) as api:
        daemon = await coderd(api, requests_per_second=20)
        channel = await broker.connection.channel()
        for name in (broker.interactive_queue, broker.request_queue):  # other arguments: PRECONDITION_FAILED
            await channel.declare_queue(name, durable=True, arguments=request_queue_arguments(name))
        await channel.declare_queue(f"{broker.interactive_queue}.dead", durable=True,
                                    arguments={"x-queue-type": "quorum"})
        await broker.publish({"topic": "anzsco", "record": record("p", 0)}, correlation_id="person",
                             queue=broker.interactive_queue)
        [(cid, reply)] = await broker.replies(1)
        await daemon.wait_for_event("request_done")
    assert cid == "person" and reply["status"] == "completed" and reply["record"]["recordId"] == "p0"
    [done] = [e for e in daemon.events() if e.get("event") == "request_done"]
    assert done["lane"] == "interactive"


async def test_an_interactive_request_is_answered_ahead_of_a_bulk_backlog(coderd, broker):
    async with EmulatorServer(quiet_config(requests_per_second=2)) as api:
        await coderd(api, requests_per_second=2, cache="false")
        await broker.publish({"topic": "anzsco", "records": [record("b", i) for i in range(2400)]},
                             correlation_id="bulk")
        while api.stats.coding_calls < 2:
            await asyncio.sleep(0.05)
        await broker.publish({"topic": "anzsco", "record": record("p", 0)}, correlation_id="person",
                             queue=broker.interactive_queue)
        replies = await broker.answered({"person"}, timeout=30)
        calls_then = api.stats.coding_calls
        if "bulk" not in replies:
            replies.update(await broker.answered({"bulk"}, timeout=60))
    assert replies["person"]["status"] == "completed" and len(replies["bulk"]["records"]) == 2400
    assert calls_then <= 5  # within a call or two, not behind the other 1,800 records (6 calls)


async def test_a_kill_with_both_lanes_busy_loses_nothing(coderd, broker):
    async with EmulatorServer(quiet_config(requests_per_second=4)) as api:
        settings = dict(requests_per_second=4, cache="false")
        daemon = await coderd(api, **settings)
        expected = set()
        for i in range(400):
            await broker.publish({"topic": "anzsco", "record": record("b", i)}, correlation_id=f"b{i}")
            expected.add(f"b{i}")
        for i in range(20):
            await broker.publish({"topic": "anzsco", "record": record("p", i)}, correlation_id=f"p{i}",
                                 queue=broker.interactive_queue)
            expected.add(f"p{i}")
        await daemon.wait_for_event("request_done", count=30)
        await daemon.kill()
        await coderd(api, **settings)
        replies = await broker.answered(expected, timeout=120)
    assert set(replies) >= expected and all(r["status"] == "completed" for r in replies.values())
    assert api.stats.throttled == 0


async def test_a_paced_trickle_spends_the_burst_and_the_even_pace_and_loses_nothing_when_stopped(coderd, broker):
    """A daily quota whose even pace is a call every ~5 s and a burst of 2.5 calls: a
    trickle of single-record requests shares calls, and SIGTERM during a pacing wait hands
    the waiting requests back to the queue, to be answered after a restart."""
    left = DAY - time.time() % DAY
    if left < 900:
        pytest.skip("too close to 00:00 UTC: the day's budget resets before the test ends")
    quota = int(left / 5)
    async with EmulatorServer(quiet_config(requests_per_second=10, daily_quota={"public": quota, "partner": quota})) as api:
        settings = dict(requests_per_second=10, daily_quota=quota, quota_burst=2.5 / quota, cache="false")
        daemon = await coderd(api, **settings)
        began = time.monotonic()
        for i in range(10):
            await broker.publish({"topic": "anzsco", "record": record("t", i)}, correlation_id=f"t{i}")
            await asyncio.sleep(0.5)
        replies = await broker.answered({f"t{i}" for i in range(10)}, timeout=60)
        elapsed = time.monotonic() - began
        used = json.loads((daemon.log_path.parent / "state" / "quota.json").read_text())["used"]
        assert used <= 2.5 + elapsed / 5 + 1  # the burst, the even pace, and rounding
        assert api.stats.coding_calls < 10 and all(r["status"] == "completed" for r in replies.values())
        for i in range(3):  # the bucket is empty now: these wait for the budget
            await broker.publish({"topic": "anzsco", "record": record("w", i)}, correlation_id=f"w{i}")
        await daemon.wait_for_event("pacing_wait", timeout=30)
        assert await daemon.terminate() == 0  # at once: none of the grace period is spent waiting for the budget
        assert await broker.message_count(broker.request_queue) == 3  # handed back, not answered, not lost
        await coderd(api, **settings)
        later = await broker.answered({f"w{i}" for i in range(3)}, timeout=60)
    assert all(r["status"] == "completed" for r in later.values())
