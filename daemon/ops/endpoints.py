"""Operator endpoints on http_listen: /healthz, /readyz and /metrics, served by aiohttp
behind coderd's own listener (listener.py), which bounds connections and slow clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.limiter import CallLimiter
from ..api.quota import QuotaLedger
from ..api.token import TokenProvider
from ..batch.journal import PHASES, Journal
from ..broker.connection import BrokerLink, dead_letter_queue
from ..broker.intake import Intake
from ..config import Settings, mask_userinfo
from ..constants import BULK, INTERACTIVE, STANDBY
from ..lifecycle import Component
from ..logs import get_logger
from ..realtime.worker import SyncWorker
from ..replica.role import ActiveRole
from ..statedir import StateDir
from . import console, history, metrics
from .listener import GuardedListener, http_connections
from .supervisor import Supervisor

log = get_logger("coderd.http")

# The quota gauges, each with its key in OperatorEndpoints.quota(). The pacing keys are
# there only while a pacer runs; without one, their gauges are left as they are.
QUOTA_GAUGES = (
    (metrics.quota_used, "used"),
    (metrics.quota_remaining, "remaining"),
    (metrics.quota_daily, "daily_quota"),
    (metrics.quota_pace, "pace_calls_per_hour"),
    (metrics.quota_even_remaining, "even_pace_remaining"),
    (metrics.quota_burst_tokens, "tokens"),
    (metrics.pacing_wait, "pacing_wait_seconds"),
)


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
    state: StateDir
    worker: SyncWorker
    # True while api_url is unset and coderd codes through its own emulator (the demo
    # default): settings.api_url is then the emulator's loopback URL.
    builtin_emulator: bool = False
    role: ActiveRole | None = None  # None: no lease (always the active one)


class OperatorEndpoints(Component):
    def __init__(self, host: str, port: int, view: DaemonView) -> None:
        self.host, self.port, self.view = host, port, view
        self._runner: web.AppRunner | None = None
        self.listener: GuardedListener | None = None

    async def start(self) -> None:
        self.listener = listener = GuardedListener(self._make_protocol)
        app = web.Application(middlewares=[listener.middleware])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/status.json", self.status_json)
        app.router.add_get("/", self.console_page)
        history.bind(quota_used=lambda: self.view.ledger.used)  # the console's quota burn-down
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # In place of web.TCPSite: the same loop.create_server() call, behind the guard.
        await listener.start(self.host, self.port)
        self.port = listener.port
        log.info("http_listening", host=self.host, port=self.port, max_connections=listener.max_connections,
                 request_timeout=listener.request_timeout, keepalive_timeout=listener.keepalive_timeout)

    def _make_protocol(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()  # aiohttp's RequestHandler for one connection

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop_listening()
        if self._runner is not None:
            await self._runner.cleanup()  # closes aiohttp's connections (idle at once, busy when done)
        if self.listener is not None:
            self.listener.abort_all()

    async def queue_depth(self, lane: str = BULK) -> int:
        settings = self.view.settings
        return await self.view.link.queue_depth(settings.interactive_queue if lane == INTERACTIVE
                                                else settings.request_queue)

    async def lanes(self) -> dict:
        """Each lane: its queue, what waits there and in the worker, its recent reply latency."""
        lanes = {}
        for lane, queue in ((INTERACTIVE, self.view.settings.interactive_queue), (BULK, self.view.settings.request_queue)):
            p50, p99 = metrics.latency_quantiles(lane)
            lanes[lane] = {"queue": queue, "queue_depth": await self.queue_depth(lane),
                           "waiting_records": self.view.worker.backlog.waiting(lane), "p50_seconds": p50,
                           "p99_seconds": p99}
        return lanes

    async def status_json(self, request: web.Request) -> web.Response:
        """/readyz's snapshot and the console's charts; 200 even when not ready."""
        document = console.status_document(await self.snapshot(), self.view.intake.pauses, self.view.journal.jobs())
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    async def console_page(self, request: web.Request) -> web.Response:
        return console.page_response()

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
        if consumer == "paused":  # pacing is the daemon working as meant: it does not make it unready
            reasons += [why for cause, why in view.intake.pauses.items() if cause not in ("pacing", STANDBY)]
        elif consumer == "stopped":
            reasons.append("not consuming")
        if not token_ok:
            reasons.append(f"no token obtainable: {token_note}")
        if view.state.problem is not None:
            reasons.append(view.state.problem)
        reasons += view.supervisor.problems()
        calls, records = metrics.recent_calls.last_minute()
        jobs = Counter(job.phase for job in view.journal.jobs())
        return {
            "ready": not reasons, "reasons": reasons,
            "coding_api": self.coding_api(),
            "broker": "connected" if connected else "disconnected", "consumer": consumer,
            "replica": self.replica(),
            "token": {"obtainable": token_ok, "note": token_note, "age_seconds": self.token_age(),
                      "requests": view.tokens.fetches},
            "quota": self.quota(),
            "cache": self.cache(),
            "last_minute": {"calls": calls, "records": records},
            "queue_depth": await self.queue_depth(),
            "lanes": await self.lanes(),
            "batch_jobs": dict(jobs),
            "tasks": view.supervisor.snapshot(),
        }

    def replica(self) -> dict:
        role = self.view.role
        if role is None:
            return {"role": "active", "active_since": None, "takeovers": 0}
        return {"role": role.name, "active_since": role.since, "takeovers": role.takeovers}

    def quota(self) -> dict:
        """Today's budget: used, left, the even-pace line and what pacing holds back now."""
        ledger, worker = self.view.ledger, self.view.worker
        budget = {"used": ledger.used, "remaining": ledger.remaining, "daily_quota": ledger.daily_quota,
                  "resets_in_seconds": round(ledger.seconds_until_reset())}
        if worker.pacer is not None:
            budget.update(worker.pacer.snapshot())
            budget["pacing_wait_seconds"] = round(worker.pacing_wait, 1) if len(worker.backlog) else 0.0
        budget["waiting_records"] = len(worker.backlog)
        return budget

    def cache(self) -> dict | None:
        cache = self.view.worker.cache
        if cache is None:
            return None
        looked_up = cache.hits + cache.misses
        return {"entries": cache.size, "max_entries": cache.max_entries, "hits": cache.hits, "misses": cache.misses,
                "hit_rate": round(cache.hits / looked_up, 3) if looked_up else None}

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
        quota = self.quota()
        for gauge, key in QUOTA_GAUGES:
            if key in quota:
                gauge.set(quota[key])
        age = self.token_age()
        metrics.token_age.set(-1 if age is None else age)
        metrics.token_requests.set(view.tokens.fetches)
        metrics.throttle_wait.set(view.limiter.waited)
        metrics.token_obtainable.set(1 if view.tokens.obtainable()[0] else 0)
        for lane, figures in (await self.lanes()).items():
            metrics.dead_letter_depth.labels(lane).set(await view.link.queue_depth(dead_letter_queue(figures["queue"])))
            metrics.queue_depth.labels(lane).set(figures["queue_depth"])
            metrics.waiting_records.labels(lane).set(figures["waiting_records"])
        metrics.broker_connected.set(1 if view.link.connected else 0)
        metrics.state_dir_writable.set(1 if view.state.writable else 0)
        metrics.builtin_emulator.set(1 if view.builtin_emulator else 0)
        metrics.set_consumer_state(view.intake.state)
        metrics.replica_active.set(1 if self.replica()["role"] == "active" else 0)
        http_connections.set(len(self.listener.open) if self.listener is not None else 0)
        phases = Counter(job.phase for job in view.journal.jobs())
        for phase in PHASES:
            metrics.batch_jobs.labels(phase).set(phases.get(phase, 0))
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
