"""Operator endpoints on http_listen: /healthz, /readyz and /metrics."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.limiter import CallLimiter
from ..api.quota import QuotaLedger
from ..api.token import TokenProvider
from ..batch.journal import PHASES, Journal
from ..broker.connection import BrokerLink
from ..broker.intake import Intake
from ..config import Settings, mask_userinfo
from ..lifecycle import Component
from ..logs import get_logger
from . import metrics
from .supervisor import Supervisor

log = get_logger("coderd.http")


@dataclass
class DaemonView:
    """The running parts the endpoints report on."""

    settings: Settings
    link: BrokerLink
    intake: Intake
    tokens: TokenProvider
    ledger: QuotaLedger
    limiter: CallLimiter
    journal: Journal
    supervisor: Supervisor
    # True while api_url is unset and coderd codes through its own emulator (the demo
    # default): settings.api_url is then the emulator's loopback URL.
    builtin_emulator: bool = False


class OperatorEndpoints(Component):
    def __init__(self, host: str, port: int, view: DaemonView) -> None:
        self.host, self.port, self.view = host, port, view
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def queue_depth(self) -> int:
        return await self.view.link.queue_depth(self.view.settings.request_queue)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        state = await self.snapshot()
        return web.json_response(state, status=200 if state["ready"] else 503)

    async def snapshot(self) -> dict:
        view, reasons = self.view, []
        connected = view.link.connected
        consumer = view.intake.state
        token_ok, token_note = view.tokens.obtainable()
        if not connected:
            reasons.append("not connected to the broker")
        if consumer == "paused":
            reasons.append(view.intake.paused_for)
        elif consumer == "stopped":
            reasons.append("not consuming")
        if not token_ok:
            reasons.append(f"no token obtainable: {token_note}")
        reasons += view.supervisor.problems()
        calls, records = metrics.recent_calls.last_minute()
        jobs = Counter(job.phase for job in view.journal.jobs())
        return {
            "ready": not reasons, "reasons": reasons,
            "coding_api": self.coding_api(),
            "broker": "connected" if connected else "disconnected", "consumer": consumer,
            "token": {"obtainable": token_ok, "note": token_note, "age_seconds": self.token_age(),
                      "requests": view.tokens.fetches},
            "quota": {"used": view.ledger.used, "remaining": view.ledger.remaining,
                      "daily_quota": view.ledger.daily_quota},
            "last_minute": {"calls": calls, "records": records},
            "queue_depth": await self.queue_depth(),
            "batch_jobs": dict(jobs),
            "tasks": view.supervisor.snapshot(),
        }

    def coding_api(self) -> dict:
        """Which coding API coderd calls. The built-in emulator does not make coderd
        unready (running it is the documented demo default), but it is said plainly."""
        if self.view.builtin_emulator:
            return {"builtin_emulator": True, "url": self.view.settings.api_url,
                    "note": "api_url is not set: coding through coderd's BUILT-IN EMULATOR, "
                            "not the real ABS service"}
        url = self.view.settings.api_url
        return {"builtin_emulator": False, "url": mask_userinfo(url) if url else None}

    def token_age(self) -> float | None:
        fetched = self.view.tokens.fetched_at
        return None if fetched is None or self.view.tokens.expires_at is None else round(time.time() - fetched, 1)

    async def metrics(self, request: web.Request) -> web.Response:
        view = self.view
        metrics.quota_used.set(view.ledger.used)
        metrics.quota_remaining.set(view.ledger.remaining)
        age = self.token_age()
        metrics.token_age.set(-1 if age is None else age)
        metrics.token_requests.set(view.tokens.fetches)
        metrics.throttle_wait.set(view.limiter.waited)
        metrics.queue_depth.set(await self.queue_depth())
        metrics.broker_connected.set(1 if view.link.connected else 0)
        metrics.builtin_emulator.set(1 if view.builtin_emulator else 0)
        metrics.set_consumer_state(view.intake.state)
        phases = Counter(job.phase for job in view.journal.jobs())
        for phase in PHASES:
            metrics.batch_jobs.labels(phase).set(phases.get(phase, 0))
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
