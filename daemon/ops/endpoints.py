"""Operator endpoints on http_listen: /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.limiter import CallLimiter
from ..api.quota import QuotaLedger
from ..api.token import TokenProvider
from ..batch.journal import PHASES, Journal
from ..broker.intake import Intake
from ..logs import get_logger
from . import metrics

log = get_logger("coderd.http")


@dataclass
class DaemonView:
    """The running parts the endpoints report on."""

    intake: Intake
    tokens: TokenProvider
    ledger: QuotaLedger
    limiter: CallLimiter
    journal: Journal
    paused: Callable[[], bool]


class OperatorEndpoints:
    def __init__(self, host: str, port: int, view: DaemonView) -> None:
        self.host, self.port, self.view = host, port, view
        self._runner: web.AppRunner | None = None
        self._probe_channel = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def consumer_state(self) -> str:
        intake = self.view.intake
        if self.view.paused():
            return "paused"
        if not intake.consuming:
            return "stopped"
        # Single active consumer gives no signal of standing by: a replica that has had
        # no delivery since it subscribed is either the standby or idle.
        return "active" if intake.active else "waiting"

    def broker_connected(self) -> bool:
        connection = self.view.intake.connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def queue_depth(self) -> int:
        if not self.broker_connected():
            return -1
        try:
            if self._probe_channel is None or self._probe_channel.is_closed:
                self._probe_channel = await self.view.intake.connection.channel()
            declared = await asyncio.wait_for(self._probe_channel.declare_queue(
                self.view.intake.settings.request_queue, passive=True), 2)
            return declared.declaration_result.message_count
        except Exception:  # a probe must never fail the endpoint
            self._probe_channel = None
            return -1

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        state = await self.snapshot()
        return web.json_response(state, status=200 if state["ready"] else 503)

    async def snapshot(self) -> dict:
        view, reasons = self.view, []
        connected = self.broker_connected()
        consumer = self.consumer_state()
        token_ok, token_note = view.tokens.obtainable()
        if not connected:
            reasons.append("not connected to the broker")
        if consumer == "paused":
            reasons.append("daily quota used up: consuming resumes at 00:00 UTC")
        elif consumer == "stopped":
            reasons.append("not consuming")
        if not token_ok:
            reasons.append(f"no token obtainable: {token_note}")
        calls, records = metrics.recent_calls.last_minute()
        jobs = Counter(job.phase for job in view.journal.jobs())
        return {
            "ready": not reasons, "reasons": reasons,
            "broker": "connected" if connected else "disconnected", "consumer": consumer,
            "token": {"obtainable": token_ok, "note": token_note, "age_seconds": self.token_age(),
                      "requests": view.tokens.fetches},
            "quota": {"used": view.ledger.used, "remaining": view.ledger.remaining,
                      "daily_quota": view.ledger.daily_quota},
            "last_minute": {"calls": calls, "records": records},
            "queue_depth": await self.queue_depth(),
            "batch_jobs": dict(jobs),
        }

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
        metrics.broker_connected.set(1 if self.broker_connected() else 0)
        metrics.set_consumer_state(self.consumer_state())
        phases = Counter(job.phase for job in view.journal.jobs())
        for phase in PHASES:
            metrics.batch_jobs.labels(phase).set(phases.get(phase, 0))
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
