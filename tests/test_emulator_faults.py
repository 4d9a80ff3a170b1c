"""Fault switches: latency, 500s, forced 429s and stalls, in-process and over HTTP."""

import asyncio
import time

import aiohttp
import pytest


async def test_latency_is_added_to_each_call(api, emulator):
    emulator.faults.latency = 0.2
    started = time.monotonic()
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert time.monotonic() - started >= 0.2


async def test_error_rate_answers_500(api, emulator):
    emulator.faults.error_rate = 1.0
    assert await api.call("GET", "/v1/topics") == (500, {"message": "Error performing request"})
    emulator.faults.error_rate = 0.0
    assert (await api.call("GET", "/v1/topics"))[0] == 200


async def test_forced_429s_then_normal_service(api, emulator):
    emulator.faults.force_429 = 2
    for _ in range(2):
        assert await api.call("GET", "/v1/topics") == (429, {"message": "Too Many Requests"})
    assert (await api.call("GET", "/v1/topics"))[0] == 200


async def test_stalled_call_never_answers(api, emulator):
    emulator.faults.stall, emulator.faults.stall_seconds = 1, 30
    with pytest.raises(asyncio.TimeoutError):
        await api.call("GET", "/v1/topics", timeout=aiohttp.ClientTimeout(total=0.5))
    assert (await api.call("GET", "/v1/topics"))[0] == 200


async def test_switches_and_clock_over_http(api, emulator):
    status, faults = await api.call("POST", "/_emulator/faults", json={"force_429": 1})
    assert status == 200 and faults["force_429"] == 1
    assert (await api.call("GET", "/v1/topics"))[0] == 429
    assert (await api.call("POST", "/_emulator/faults", json={"bogus": 1}))[0] == 400
    status, body = await api.call("POST", "/_emulator/clock", json={"seconds": 7200})
    assert status == 200 and body["offset"] == 7200
    assert (await api.call("GET", "/v1/topics"))[0] == 403  # the token expired
    status, stats = await api.call("GET", "/_emulator/stats")
    assert stats["v1_calls"] == 1 and stats["tokens_issued"] == 1
