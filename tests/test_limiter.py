"""The call limiter: starts at least `interval` apart, FIFO, no wait when idle."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.api.client import call_tracing
from daemon.api.limiter import CallLimiter

TIMER_SLACK = 1e-4  # the test reads the loop clock a few microseconds after acquire() returned


def now() -> float:
    return asyncio.get_running_loop().time()


def test_interval_is_one_over_rate_plus_margin():
    assert CallLimiter(1.0).interval == pytest.approx(1.03)
    assert CallLimiter(4.0, margin=0.05).interval == pytest.approx(0.30)
    with pytest.raises(ValueError):
        CallLimiter(0)


async def test_call_starts_are_at_least_interval_apart():
    limiter = CallLimiter(50, margin=0.002)  # 22 ms
    starts: list[float] = []

    async def caller() -> None:
        await limiter.acquire()
        starts.append(now())

    await asyncio.gather(*(caller() for _ in range(6)))
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert min(gaps) >= limiter.interval - TIMER_SLACK, gaps
    assert limiter.calls == 6
    assert limiter.waited >= sum(range(6)) * limiter.interval * 0.99  # the k-th caller waited ~k intervals


async def test_idle_limiter_adds_no_wait():
    limiter = CallLimiter(50, margin=0)
    assert limiter.next_slot_in() == 0
    await limiter.acquire()
    assert limiter.waited == 0 and limiter.calls == 1
    assert 0 < limiter.next_slot_in() <= limiter.interval
    await asyncio.sleep(limiter.interval + 0.005)
    assert limiter.next_slot_in() == 0
    await limiter.acquire()
    assert limiter.waited == 0 and limiter.calls == 2


async def test_waiters_are_served_in_arrival_order():
    limiter = CallLimiter(100, margin=0)
    await limiter.acquire()  # busy: everyone below has to queue
    served: list[int] = []

    async def caller(number: int) -> None:
        await limiter.acquire()
        served.append(number)

    tasks = []
    for number in range(6):
        tasks.append(asyncio.create_task(caller(number)))
        await asyncio.sleep(0)  # arrive one after another
    await asyncio.gather(*tasks)
    assert served == list(range(6))


async def test_penalize_pushes_the_next_slot_and_never_shortens_it():
    limiter = CallLimiter(50, margin=0)
    limiter.penalize(0.08)
    limiter.penalize(0.01)  # a shorter back-off must not bring the slot closer
    assert limiter.next_slot_in() > 0.07
    asked = now()
    await limiter.acquire()
    assert now() - asked >= 0.08 - 0.005  # (a few loop-clock reads after penalize)
    assert limiter.waited > 0.07


async def test_penalize_while_a_waiter_sleeps_delays_it():
    limiter = CallLimiter(50, margin=0)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # it is now sleeping until the next slot (20 ms)
    penalized = now()
    limiter.penalize(0.06)
    await waiter
    assert now() - penalized >= 0.06 - TIMER_SLACK


async def test_guard_keeps_a_full_interval_free():
    limiter = CallLimiter(50, margin=0.01)  # 30 ms
    limiter.guard()
    assert limiter.next_slot_in() > limiter.interval - 0.01
    guarded = now()
    await limiter.acquire()
    assert now() - guarded >= limiter.interval - TIMER_SLACK


async def test_cancelled_waiters_take_no_slot_and_block_nobody():
    limiter = CallLimiter(50, margin=0)  # 20 ms
    await limiter.acquire()
    sleeping_head = asyncio.create_task(limiter.acquire())
    queued = asyncio.create_task(limiter.acquire())
    last = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    sleeping_head.cancel()
    queued.cancel()
    await asyncio.sleep(0)
    assert sleeping_head.cancelled() and queued.cancelled()
    assert limiter.next_slot_in() <= limiter.interval  # nothing reserved beyond the first slot
    await asyncio.wait_for(last, timeout=5)  # not stuck behind the cancelled ones
    assert limiter.calls == 2
    await asyncio.wait_for(limiter.acquire(), timeout=5)
    assert limiter.calls == 3


async def test_a_call_is_stamped_when_its_body_is_on_the_wire_not_before():
    """aiohttp reports a request's headers before writing them: it holds them back to
    send with the body, which a separate task writes. A loop busy in between must not
    make the limiter count the call as started before the server could see it."""
    arrivals: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(now())
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/code", handler)
    busy = aiohttp.TraceConfig()  # the loop stalls right after the headers are reported

    async def stall(_session, _context, _params) -> None:
        asyncio.get_running_loop().call_soon(time.sleep, 0.5)

    busy.on_request_headers_sent.append(stall)
    stamps: list[float] = []
    async with TestServer(app, host="127.0.0.1") as server, \
            aiohttp.ClientSession(trace_configs=[call_tracing(), busy]) as session:
        async with session.post(server.make_url("/v1/code"), json={"records": ["x" * 2000]},
                                trace_request_ctx={"on_sent": lambda: stamps.append(now())}) as response:
            assert response.status == 200
    assert stamps and arrivals
    assert arrivals[0] - stamps[-1] < 0.25, (stamps, arrivals)  # without the body stamp: 0.5 s early
