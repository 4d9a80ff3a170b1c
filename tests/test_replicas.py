"""Replicas on separate hosts: three coderd processes, each with its own state_dir, share
only the broker. Kill -9 the active one in each batch phase and under real-time load: a
standby takes the lease, reads the state stream back, and finishes the work with the
operations already created and the day's call count carried over."""

import asyncio
import json
import urllib.request

import pytest
from harness import EmulatorProcess

PARTNER = dict(tier="partner", requests_per_second=5, batch_poll_seconds=0.3, batch_threshold=50)


def texts(n: int, prefix: str) -> list[dict]:
    return [{"recordId": f"{prefix}{i}", "occp_text": "electrician", "tasks_text": f"{prefix} wiring houses {i}"}
            for i in range(n)]


def events(daemon, name: str) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == name]


def readyz(daemon) -> dict:
    [listening] = events(daemon, "http_listening")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listening['port']}/readyz", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 503: still a snapshot
        return json.load(error)


async def three_replicas(coderd, api, tmp_path, **settings):
    """The first one started takes the lease; the other two stand by."""
    first = await coderd(api, state_dir=tmp_path / "host-a", **settings)
    assert events(first, "replica_active")
    standbys = [await coderd(api, state_dir=tmp_path / f"host-{name}", **settings) for name in "bc"]
    assert all(events(d, "standing_by") and not events(d, "replica_active") for d in standbys)
    return first, standbys


async def wait_for(condition, timeout: float = 60, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("phase", ["uploading", "polling", "downloading"])
async def test_a_standby_on_another_host_finishes_a_batch_job_with_its_operation(coderd, broker, tmp_path, phase):
    async with EmulatorProcess(rate=5.0, processing_seconds=2.0) as api:
        active, standbys = await three_replicas(coderd, api, tmp_path, **PARTNER)
        # Coded once through the real-time route, these texts are in host a's result cache:
        # the batch job does not upload them, and only the state stream tells a standby so.
        known = texts(20, "known")
        await broker.publish({"topic": "anzsco", "records": known}, correlation_id="warm")
        [(_, warm)] = await broker.replies(1)
        assert warm["route"] == "sync"
        records = texts(400, "new") + known
        api.faults.transfer_delay = 1.0 if phase in ("uploading", "downloading") else 0.0
        await broker.publish({"topic": "anzsco", "records": records}, correlation_id="job")
        await wait_for(lambda: any(e.get("phase") == phase for e in events(active, "batch_phase")), what=phase)
        await active.kill()

        [(cid, reply)] = await broker.replies(1, timeout=90)
        assert cid == "job" and reply["status"] == "completed" and reply["route"] == "batch"
        assert [r["recordId"] for r in reply["records"]] == [r["recordId"] for r in records]
        assert all(r["codeStatus"] == "successful" for r in reply["records"])
        stats = api.stats
        assert stats.operations_created == 1 and stats.throttled == 0, stats.throttled_calls
        [successor] = [d for d in standbys if events(d, "replica_active")]
        [taken] = events(successor, "batch_job_taken_over")
        assert taken["phase"] == phase and len(taken["operations"]) == 1
        assert events(successor, "batch_spool_rebuilt")
        assert stats.uploads == 1 or phase == "uploading"  # uploaded again only if the kill cut the upload


async def test_a_standby_on_another_host_takes_over_real_time_load_and_the_call_count(coderd, broker, tmp_path):
    async with EmulatorProcess(rate=5.0, latency=0.1) as api:
        active, standbys = await three_replicas(coderd, api, tmp_path, requests_per_second=5)
        items = [({"topic": "anzsco", "record": record}, record["recordId"]) for record in texts(3000, "r")]
        for body, cid in items:
            await broker.publish(body, correlation_id=cid)
        await wait_for(lambda: len(events(active, "request_done")) >= 900, what="900 replies")
        await active.kill()
        calls_before = api.stats.v1_calls

        counts = await broker.reply_counts({cid for _, cid in items}, timeout=120)
        assert len(counts) == len(items)  # none lost
        assert sum(counts.values()) - len(counts) <= 1000  # duplicates: at most what was in flight (prefetch)
        stats = api.stats
        assert stats.throttled == 0, stats.throttled_gaps
        [successor] = [d for d in standbys if events(d, "replica_active")]
        [active_event] = events(successor, "replica_active")
        # The day's count carried over: all but the calls in flight at the kill (and the
        # count written behind them) reached the successor.
        assert calls_before - 2 <= active_event["calls_today"] <= calls_before + 1
        assert readyz(successor)["quota"]["used"] == stats.v1_calls - (calls_before - active_event["calls_today"])
        [other] = [d for d in standbys if d is not successor]
        assert readyz(other)["replica"]["role"] == "standby"
