"""Faults of the host, for real: a state_dir on a tiny tmpfs that fills up (mid-run, and
before the first call), with the whole daemon in-process against the real broker."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import quiet_config
from test_supervision import RECORD, daemon_in_process

from daemon.emulator import EmulatorServer


@pytest.fixture
def small_state_dir(tmpfs):
    """state_dir on a 2 MB tmpfs (mounting needs root: skipped elsewhere)."""
    return tmpfs("state", "size=2m")


def fill(directory) -> None:
    """Take every free byte of the file system `directory` is on."""
    with open(directory / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (64 << 10))
                filler.flush()
        except OSError:
            pass


async def readyz(session, base) -> tuple[int, dict]:
    async with session.get(f"{base}/readyz") as response:
        return response.status, await response.json()


@pytest.mark.parametrize("when", ["mid-run", "before the first call"])
async def test_a_full_state_dir_costs_no_request_and_coding_resumes_when_space_returns(
        broker, tmp_path, small_state_dir, when):
    async with EmulatorServer(quiet_config()) as api, aiohttp.ClientSession() as session, \
            daemon_in_process(broker, tmp_path, api, state_dir=small_state_dir) as (daemon, base):
        if when == "mid-run":
            await broker.publish({"topic": "anzsco", "record": RECORD}, correlation_id="before")
            await broker.answered({"before"}, timeout=30)
        calls = api.stats.v1_calls
        fill(small_state_dir)
        expected = {f"during{i}" for i in range(20)}
        for cid in sorted(expected):  # texts of their own: the result cache would answer RECORD without a call
            await broker.publish({"topic": "anzsco", "record": {**RECORD, "occp_text": f"plumber {cid}"}},
                                 correlation_id=cid)
        for _ in range(200):
            status, state = await readyz(session, base)
            if status == 503 and any("state_dir not writable" in r for r in state["reasons"]):
                break
            await asyncio.sleep(0.05)
        assert status == 503, state
        await asyncio.sleep(1.0)
        assert api.stats.v1_calls <= calls + 1  # at most the topic list, counted before the disk filled
        (small_state_dir / "filler").unlink()  # space returns
        replies = await broker.answered(expected, timeout=60)
        status, state = await readyz(session, base)
    assert all(r["status"] == "completed" for r in replies.values())
    assert status == 200, state
