"""The emulator's token endpoint and the raw-token rule on /v1 calls."""

from conftest import CLIENT_ID, ApiClient

DENY = {"Message": "User is not authorized to access this resource with an explicit deny"}


async def test_token_for_guide_credentials(emulator, session):
    client = ApiClient(session, emulator.url)
    response = await client.fetch_token()
    assert response.status == 200
    assert response.body["expires_in"] == 3600
    assert response.body["token_type"]
    assert len(response.body["access_token"]) > 20
    assert emulator.stats.tokens_issued == 1


async def test_wrong_secret_or_grant_is_refused(emulator, session):
    client = ApiClient(session, emulator.url)
    assert (await client.fetch_token(CLIENT_ID, "wrong")).status == 400
    assert client.token is None
    async with session.post(f"{emulator.url}/oauth2/token", auth=None,
                            headers={"Authorization": "Basic Y2xpZW50MTpzZWNyZXQxMjM="},
                            data={"grant_type": "password"}) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "unsupported_grant_type"


async def test_raw_token_is_accepted(api):
    status, body = await api.call("GET", "/v1/topics")
    assert status == 200
    assert {t["uriName"] for t in body} >= {"anzsco", "osca"}


async def test_missing_unknown_and_bearer_tokens_are_denied(api):
    assert await api.call("GET", "/v1/topics", token="") == (403, DENY)
    assert await api.call("GET", "/v1/topics", token="not-a-token") == (403, DENY)
    assert await api.call("GET", "/v1/topics", token=f"Bearer {api.token}") == (403, DENY)


async def test_expired_token_is_denied(api, emulator):
    emulator.clock.advance(3599)
    assert (await api.call("GET", "/v1/topics"))[0] == 200
    emulator.clock.advance(2)
    assert await api.call("GET", "/v1/topics") == (403, DENY)


async def test_excessive_token_requests_are_blocked_for_a_while(emulator, session):
    client = ApiClient(session, emulator.url)
    limit = emulator.emulator.config.token_requests_per_hour
    for _ in range(limit):
        assert (await client.fetch_token()).status == 200
    refused = await client.fetch_token()
    assert refused.status == 403 and refused.body == DENY
    emulator.clock.advance(60)
    assert (await client.fetch_token()).status == 403  # still blocked
    emulator.clock.advance(emulator.emulator.config.token_block_seconds)
    assert (await client.fetch_token()).status == 200
