"""The daemon's life: start the shared services, consume, pause for the quota, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from .api.catalog import ModelCatalog
from .api.client import ApiCaller, call_tracing
from .api.limiter import CallLimiter
from .api.quota import QuotaLedger
from .api.token import TokenProvider
from .batch.journal import Journal
from .batch.manager import BatchManager
from .broker.intake import Intake
from .broker.replies import ReplyPublisher
from .config import Settings
from .logs import get_logger, register_secret
from .ops.endpoints import DaemonView, OperatorEndpoints
from .ops.sdnotify import SystemdNotifier
from .realtime.worker import SyncWorker
from .request.dispatch import Dispatcher

SHUTDOWN_GRACE = 20.0  # seconds for requests in flight to get their replies at SIGTERM

log = get_logger("coderd")


async def start_embedded_emulator(settings: Settings):
    """With no api_url, coderd codes through its built-in emulator (the default run)."""
    from .emulator import EmulatorServer
    from .emulator.settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    server = await EmulatorServer().start()
    log.warning("using_builtin_emulator", url=server.url,
                note="api_url is not set: coding through coderd's BUILT-IN EMULATOR of the coding API, "
                     "not the real ABS service")
    updated = settings.model_copy(update={
        "api_url": server.url, "auth_url": server.url,
        "client_id": settings.client_id or DEFAULT_CLIENT_ID,
    })
    secret = settings.client_secret.get_secret_value() if settings.client_secret else DEFAULT_CLIENT_SECRET
    return server, updated, secret


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.intake: Intake | None = None
        self.ledger: QuotaLedger | None = None
        self._paused: asyncio.Task | None = None
        self.notifier = SystemdNotifier()

    async def run(self, stop: asyncio.Event) -> int:
        # The watchdog pings from the event loop: a stuck loop stops them and systemd restarts us.
        watchdog = asyncio.create_task(self.notifier.watchdog(), name="sd-watchdog")
        try:
            return await self._run(stop)
        finally:
            watchdog.cancel()

    async def _run(self, stop: asyncio.Event) -> int:
        settings, emulator = self.settings, None
        if settings.uses_emulator:
            emulator, settings, secret = await start_embedded_emulator(settings)
        else:
            secret = settings.client_secret.get_secret_value()
        for value in [secret, *settings.secret_values()]:
            register_secret(value)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting", settings=settings.public_view())
        async with aiohttp.ClientSession(trace_configs=[call_tracing()]) as session:
            tokens = TokenProvider(session, settings.auth_url, settings.client_id, secret, settings.state_dir)
            limiter = CallLimiter(settings.requests_per_second)
            self.ledger = QuotaLedger(settings.state_dir, settings.daily_quota)
            caller = ApiCaller(session, settings.api_url, tokens, limiter, self.ledger)
            catalog = ModelCatalog(caller)
            worker = SyncWorker(caller, catalog, on_quota_exhausted=self.pause_for_quota)
            self.intake = intake = Intake(settings, handle=self._handle, on_first_delivery=limiter.guard)
            endpoints = OperatorEndpoints(*settings.http_host_port, DaemonView(
                intake, tokens, self.ledger, limiter, Journal(settings.state_dir),
                paused=lambda: self._paused is not None and not self._paused.done()))
            await endpoints.start()
            await intake.connect()
            publisher = ReplyPublisher(intake.reply_channel, settings.default_reply_queue)
            batch = BatchManager(settings, caller, catalog, session, publisher)
            self.dispatcher = Dispatcher(settings, worker, batch, publisher)
            worker_task = asyncio.create_task(worker.run(), name="sync-worker")
            await batch.start()
            try:
                if self.ledger.exhausted:
                    self.pause_for_quota()
                else:
                    await intake.start_consuming()
                self.notifier.notify("READY=1", "STATUS=paused: daily quota used up" if self.ledger.exhausted
                                     else f"STATUS=consuming {settings.request_queue}")
                await stop.wait()
                self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing requests in flight")
                log.info("stopping", in_flight=len(intake.tasks))
                await self._shutdown(intake, worker)
            finally:
                await batch.stop()
                worker_task.cancel()
                if self._paused is not None:
                    self._paused.cancel()
                await intake.close()
                await endpoints.stop()
                if emulator is not None:
                    await emulator.stop()
        log.info("stopped")
        return 0

    async def _handle(self, message) -> None:
        await self.dispatcher.handle(message)

    async def _shutdown(self, intake: Intake, worker: SyncWorker) -> None:
        """Stop taking messages, let what is in flight finish, hand back the rest."""
        await intake.stop_consuming()
        if intake.tasks:
            _, late = await asyncio.wait(set(intake.tasks), timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()  # each hands its message back to the queue
            if late:
                await asyncio.wait(late, timeout=10)
                log.warning("handed_back_at_shutdown", requests=len(late))

    def pause_for_quota(self) -> None:
        """The day's calls are used up: stop consuming so requests wait in the queue,
        not unacked past the broker's consumer timeout, and resume at 00:00 UTC."""
        if self._paused is None or self._paused.done():
            self._paused = asyncio.get_running_loop().create_task(self._pause_until_reset())

    async def _pause_until_reset(self) -> None:
        await self.intake.stop_consuming()
        log.warning("quota_exhausted", used=self.ledger.used,
                    resumes_in_seconds=round(self.ledger.seconds_until_reset()))
        await self.ledger.wait_for_reset()
        log.info("quota_reset")
        with contextlib.suppress(Exception):
            await self.intake.start_consuming()
