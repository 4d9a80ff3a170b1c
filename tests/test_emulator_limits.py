"""The throttle (calls per second) and the daily quota, per client."""

import asyncio

from conftest import PUBLIC, ApiClient

TOO_MANY = {"message": "Too Many Requests"}
LIMIT = {"message": "Limit Exceeded"}


async def test_calls_closer_than_the_rate_are_refused(make_emulator, session):
    server = await make_emulator(requests_per_second=4)
    api = ApiClient(session, server.url)
    await api.fetch_token()  # token requests are not throttled
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert await api.call("GET", "/v1/topics") == (429, TOO_MANY)
    assert server.stats.throttled == 1
    [gap] = server.stats.throttled_gaps  # how close it came, for a failing test to show
    assert 0 <= gap < 0.25
    await asyncio.sleep(0.3)
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert server.stats.throttled == 1


async def test_default_rate_is_one_call_per_second():
    from daemon.emulator import EmulatorConfig
    config = EmulatorConfig()
    assert config.requests_per_second == 1.0
    assert config.daily_quota == {"public": 1000, "partner": 10000}
    assert config.faults.latency == 1.0


async def test_daily_quota_resets_at_the_next_utc_day(make_emulator, session):
    server = await make_emulator(clients=PUBLIC, daily_quota={"public": 3, "partner": 5})
    api = ApiClient(session, server.url)
    await api.fetch_token()
    for _ in range(3):
        assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert await api.call("GET", "/v1/topics") == (429, LIMIT)
    assert server.stats.quota_refused == 1
    server.clock.advance(86400)
    await api.fetch_token()
    assert (await api.call("GET", "/v1/topics"))[0] == 200


async def test_quota_depends_on_the_tier(make_emulator, session):
    server = await make_emulator(daily_quota={"public": 1, "partner": 2})  # client1 is partner
    api = ApiClient(session, server.url)
    await api.fetch_token()
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    assert await api.call("GET", "/v1/topics") == (429, LIMIT)


async def test_coders_are_loaded_before_the_port_opens():
    """Loading a topic holds the GIL for long stretches: done during a request, it would
    stamp other requests' arrival late and make a well-behaved client look too fast."""
    from daemon.emulator import EmulatorServer
    from daemon.emulator.coder import coder_for
    coder_for.cache_clear()
    async with EmulatorServer():
        assert coder_for.cache_info().currsize == 2
