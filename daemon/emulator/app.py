"""The emulator's aiohttp application: the gateway rules in front of every /v1 call,
the token endpoint, fault and clock switches for tests, and an in-process server."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import batch, catalog, objects, realtime
from .coder import load_coders
from .presign import Signer
from .responses import api_error, denied
from .settings import Clock, EmulatorConfig
from .state import CLIENT_ID, EMULATOR, Emulator


@web.middleware
async def gateway(request: web.Request, handler):
    """Auth, quota, throttle, faults and latency, in the order an API gateway applies them."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    emulator = request.app[EMULATOR]
    try:
        response = await _gateway(emulator, request, handler)
    except web.HTTPException as answer:
        emulator.stats.count_status(answer.status)
        raise
    emulator.stats.count_status(response.status)
    return response


async def _gateway(emulator: Emulator, request: web.Request, handler):
    client_id = emulator.accounts.client_from_token(request.headers.get("Authorization"))
    if client_id is None:
        raise denied()
    if emulator.limits.quota_exceeded(client_id, emulator.accounts.tier(client_id)):
        emulator.stats.quota_refused += 1
        raise api_error(429, "Limit Exceeded")
    if (gap := emulator.limits.too_soon(client_id)) is not None:
        emulator.stats.throttled += 1
        emulator.stats.throttled_gaps.append(round(gap, 4))
        emulator.stats.throttled_calls.append(f"{request.method} {request.path} after {emulator.stats.last_call}")
        raise api_error(429, "Too Many Requests")
    emulator.stats.last_call = f"{request.method} {request.path}"
    emulator.limits.count(client_id)
    emulator.stats.v1_calls += 1
    request[CLIENT_ID] = client_id
    faults = emulator.faults
    if faults.stall > 0:
        faults.stall -= 1
        try:  # hang without answering, but let a server shutdown end the wait
            await asyncio.wait_for(emulator.stopping.wait(), faults.stall_seconds)
        except asyncio.TimeoutError:
            pass
        raise web.HTTPServiceUnavailable()
    if faults.force_429 > 0:
        faults.force_429 -= 1
        raise api_error(429, "Too Many Requests")
    if faults.error_rate and emulator.dice.random() < faults.error_rate:
        raise api_error(500, "Error performing request")
    if faults.latency > 0:
        await asyncio.sleep(faults.latency)
    return await handler(request)


async def token(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    emulator.stats.token_requests += 1
    if emulator.faults.token_outage:
        raise web.HTTPServiceUnavailable()
    client_id = emulator.accounts.client_from_basic(request.headers.get("Authorization"))
    if client_id is None:
        return web.json_response({"error": "invalid_client"}, status=400)
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    if not emulator.accounts.admit_token_request(client_id):
        raise denied()
    emulator.stats.tokens_issued += 1
    return web.json_response({
        "access_token": emulator.accounts.issue(client_id),
        "expires_in": int(emulator.config.token_ttl),
        "token_type": "Bearer",
    })


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].stats.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    try:
        request.app[EMULATOR].faults.update(await request.json())
    except (KeyError, ValueError, AttributeError) as exc:
        raise api_error(400, f"unknown fault switch: {exc}") from None
    return web.json_response(request.app[EMULATOR].faults.__dict__)


async def advance_clock(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[EMULATOR].clock.advance(float(body.get("seconds", 0)))
    return web.json_response({"offset": request.app[EMULATOR].clock.offset})


def build_app(emulator: Emulator) -> web.Application:
    app = web.Application(middlewares=[gateway], client_max_size=1 << 20)
    app[EMULATOR] = emulator
    app[batch.OPERATIONS] = {}
    app[batch.SIGNER] = Signer()
    app.router.add_post("/oauth2/token", token)
    catalog.add_routes(app)
    realtime.add_routes(app)
    batch.add_routes(app)
    objects.add_routes(app)
    app.router.add_get("/_emulator/stats", get_stats)
    app.router.add_post("/_emulator/faults", set_faults)
    app.router.add_post("/_emulator/clock", advance_clock)
    app.on_startup.append(_load_coders)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


async def _load_coders(_app: web.Application) -> None:
    # Before the port opens: loading a topic's data holds the GIL for long stretches,
    # and arrivals stamped late meanwhile would look like a client's throttle violation.
    await asyncio.to_thread(load_coders)


async def _shutdown(app: web.Application) -> None:
    app[EMULATOR].stopping.set()


async def _cleanup(app: web.Application) -> None:
    await app[EMULATOR].aclose()


class EmulatorServer:
    """The emulator on a loopback port, started and stopped from inside an event loop."""

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = Emulator(config, clock)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self):
        return self.emulator.stats

    @property
    def faults(self):
        return self.emulator.faults

    @property
    def clock(self) -> Clock:
        return self.emulator.clock

    async def start(self) -> "EmulatorServer":
        self._runner = web.AppRunner(build_app(self.emulator), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "EmulatorServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


