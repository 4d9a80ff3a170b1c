"""The shared token: one request however many callers, cached for restarts, refreshed only
near expiry, and never a storm of token requests whatever the endpoint answers."""

from __future__ import annotations

import asyncio
import json
import stat
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from daemon.api import token as token_module
from daemon.api.token import TokenProvider, TokenUnavailable
from daemon.emulator import Client, EmulatorConfig, EmulatorServer, Faults

CLIENT_ID, CLIENT_SECRET = "client1", "secret123"


class Offset:
    """A wall clock the test moves forward, like the emulator's own."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return time.time() + self.seconds


@pytest.fixture
async def server():
    config = EmulatorConfig(requests_per_second=0, faults=Faults(latency=0),
                            clients={CLIENT_ID: Client(CLIENT_SECRET), "client2": Client("secret456")})
    async with EmulatorServer(config) as running:
        yield running


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def clock():
    return Offset()


@pytest.fixture
def make_provider(session, server, tmp_path, clock):
    def make(client_id=CLIENT_ID, secret=CLIENT_SECRET, *, url=None, state_dir=None, **options):
        return TokenProvider(session, url or server.url, client_id, secret, state_dir or tmp_path / "state",
                             clock=clock, **options)
    return make


def advance(server, clock, seconds: float) -> None:
    server.clock.advance(seconds)
    clock.seconds += seconds


async def test_first_get_fetches_once_and_the_token_works(make_provider, server, session):
    provider = make_provider()
    assert server.stats.token_requests == 0 and provider.fetches == 0  # nothing at construction
    token = await provider.get()
    assert await provider.get() == token
    assert server.stats.token_requests == 1 and provider.fetches == 1
    assert provider.expires_at - provider.fetched_at == pytest.approx(3600)
    async with session.get(f"{server.url}/v1/topics", headers={"Authorization": token}) as response:
        assert response.status != 403


async def test_concurrent_callers_share_one_request(make_provider, server):
    provider = make_provider()
    tokens = await asyncio.gather(*(provider.get() for _ in range(50)))
    assert len(set(tokens)) == 1
    assert server.stats.token_requests == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_request(make_provider, server):
    provider = make_provider()
    impatient, patient = asyncio.create_task(provider.get()), asyncio.create_task(provider.get())
    await asyncio.sleep(0)
    impatient.cancel()
    assert isinstance(await patient, str)
    assert server.stats.token_requests == 1


async def test_cached_with_mode_0600_and_reused_after_a_restart(make_provider, server, tmp_path):
    state_dir = tmp_path / "not" / "yet"
    token = await make_provider(state_dir=state_dir).get()
    path = state_dir / "token.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cached = json.loads(path.read_text())
    assert (cached["auth_url"], cached["client_id"], cached["access_token"]) == (server.url, CLIENT_ID, token)
    assert [p.name for p in state_dir.iterdir()] == ["token.json"]  # no temporary files left behind

    restarted = make_provider(state_dir=state_dir)
    assert await restarted.get() == token
    assert restarted.fetches == 0 and server.stats.token_requests == 1


async def test_cache_of_another_client_or_service_is_not_reused(make_provider, server):
    token = await make_provider().get()
    other_client = make_provider("client2", "secret456")
    assert await other_client.get() != token
    assert other_client.fetches == 1 and server.stats.token_requests == 2
    elsewhere = make_provider(url="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(TokenUnavailable):
        await elsewhere.get()
    assert elsewhere.fetches == 1


async def test_nearly_expired_cache_is_not_reused(make_provider, server, clock):
    await make_provider().get()
    advance(server, clock, 3600 - 100)  # less than refresh_margin (120 s) left
    restarted = make_provider()
    await restarted.get()
    assert restarted.fetches == 1 and server.stats.token_requests == 2


async def test_refreshed_once_and_only_near_expiry(make_provider, server, clock):
    provider = make_provider()
    first = await provider.get()
    advance(server, clock, 3000)
    assert await provider.get() == first and server.stats.token_requests == 1
    advance(server, clock, 540)  # 60 s of life left
    tokens = await asyncio.gather(*(provider.get() for _ in range(20)))
    assert set(tokens) == {tokens[0]} and tokens[0] != first
    assert await provider.get() == tokens[0]
    assert server.stats.token_requests == 2 and provider.fetches == 2


async def test_failed_refresh_keeps_using_the_still_valid_token(make_provider, server, clock):
    provider = make_provider()
    first = await provider.get()
    advance(server, clock, 3540)
    server.emulator.config.token_requests_per_hour = 0  # the endpoint now answers 403
    assert await provider.get() == first
    assert await provider.get() == first  # backing off: no second request
    assert server.stats.token_requests == 2
    advance(server, clock, 60)  # expired now
    with pytest.raises(TokenUnavailable):
        await provider.get()
    assert server.stats.token_requests == 2


async def test_invalidate_refetches_once_then_rate_limits(make_provider, server, clock):
    provider = make_provider()
    first = await provider.get()
    provider.invalidate(first)
    assert json.loads(provider.path.read_text())["access_token"] is None  # dropped from the file too
    second = await provider.get()
    assert second != first and server.stats.token_requests == 2

    provider.invalidate(second)  # refused again within min_refetch_interval
    for _ in range(10):
        with pytest.raises(TokenUnavailable) as caught:
            await provider.get()
    assert 290 < caught.value.retry_after <= 300
    assert server.stats.token_requests == 2
    restarted = make_provider()  # a restart does not reset the limit
    with pytest.raises(TokenUnavailable):
        await restarted.get()
    assert server.stats.token_requests == 2

    clock.seconds += 300
    third = await provider.get()
    assert third not in (first, second) and server.stats.token_requests == 3
    provider.invalidate(third)  # a third refusal in a row: the wait doubles
    with pytest.raises(TokenUnavailable) as caught:
        await provider.get()
    assert 590 < caught.value.retry_after <= 600


async def test_stale_invalidate_does_nothing(make_provider, server):
    provider = make_provider()
    first = await provider.get()
    provider.invalidate(first)
    second = await provider.get()
    provider.invalidate(first)  # a late 403 for the token already replaced
    assert await provider.get() == second
    assert server.stats.token_requests == 2


async def test_wrong_secret_never_becomes_a_storm(make_provider, server, clock):
    provider = make_provider(secret="wrong-secret")
    for _ in range(20):
        with pytest.raises(TokenUnavailable) as caught:
            await provider.get()
    assert server.stats.token_requests == 1
    assert "credentials rejected" in str(caught.value) and "wrong-secret" not in str(caught.value)
    assert caught.value.retry_after == pytest.approx(300, abs=1)
    clock.seconds += 300
    with pytest.raises(TokenUnavailable):
        await provider.get()
    assert server.stats.token_requests == 2


async def test_concurrent_callers_share_one_failure(make_provider, server):
    provider = make_provider(secret="wrong-secret")
    results = await asyncio.gather(*(provider.get() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(result, TokenUnavailable) for result in results)
    assert server.stats.token_requests == 1


async def test_blocked_by_the_endpoint_backs_off_15_minutes(make_provider, server, clock):
    server.emulator.config.token_requests_per_hour = 0  # the next token request is "too many"
    provider = make_provider()
    with pytest.raises(TokenUnavailable) as caught:
        await provider.get()
    assert caught.value.retry_after == pytest.approx(900, abs=1)
    advance(server, clock, 899)
    with pytest.raises(TokenUnavailable):
        await provider.get()
    with pytest.raises(TokenUnavailable):
        await make_provider().get()  # a restart honours the block
    assert server.stats.token_requests == 1

    server.emulator.config.token_requests_per_hour = 5
    advance(server, clock, 2)
    assert isinstance(await provider.get(), str)
    assert server.stats.token_requests == 2


async def test_server_errors_and_timeouts_back_off_briefly(session, tmp_path, clock, monkeypatch):
    """Statuses other than 400/401/403, and no answer in time: a short, growing back-off."""
    answers, released = ["500", "500", "hang"], asyncio.Event()

    async def token_endpoint(request: web.Request) -> web.Response:
        answer = answers.pop(0)
        if answer == "hang":
            await released.wait()
        return web.json_response({"message": "Internal server error"}, status=500)

    app = web.Application()
    app.router.add_post("/oauth2/token", token_endpoint)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setattr(token_module, "TOKEN_TIMEOUT", aiohttp.ClientTimeout(total=0.1))
    try:
        url = str(server.make_url("")).rstrip("/")
        provider = TokenProvider(session, url, CLIENT_ID, CLIENT_SECRET, tmp_path, clock=clock)
        with pytest.raises(TokenUnavailable) as caught:
            await provider.get()
        first_backoff = caught.value.retry_after
        assert 0 < first_backoff <= 60 and "500" in str(caught.value)
        for _ in range(5):
            with pytest.raises(TokenUnavailable):
                await provider.get()
        assert provider.fetches == 1
        clock.seconds += first_backoff
        with pytest.raises(TokenUnavailable) as caught:
            await provider.get()
        assert provider.fetches == 2 and first_backoff < caught.value.retry_after <= 60
        clock.seconds += 60
        with pytest.raises(TokenUnavailable) as caught:  # the endpoint does not answer in time
            await provider.get()
        assert provider.fetches == 3 and caught.value.retry_after <= 60 and answers == []
    finally:
        released.set()
        await server.close()


async def test_token_and_secret_stay_out_of_logs(make_provider):
    with capture_logs() as events:
        provider = make_provider()
        token = await provider.get()
        provider.invalidate(token)
        await provider.get()
        with pytest.raises(TokenUnavailable):
            await make_provider(secret="wrong-secret", state_dir=provider.path.parent / "other").get()
    text = repr(events)
    assert events and token not in text and CLIENT_SECRET not in text and "wrong-secret" not in text
    from daemon.logs import redact_text
    assert token not in redact_text(f"Authorization: {token}")  # registered as a secret
