"""The daemon's life: its parts built in dependency order, started in that order, and
stopped in reverse, each awaited (one `AsyncExitStack`).

    coding API (or the built-in emulator) -> supervisor -> HTTP session -> operator
    endpoints -> broker link -> state stream -> lease -> the core (token, limiter, quota
    ledger, catalog, real-time worker, batch manager, finisher, dispatcher) -> intake
    -> active role (consuming and batch jobs start once this replica holds the lease)

At SIGTERM the intake stops first (requests in flight get a grace period, the rest go
back to the queue), then the batch manager and the worker, then the lease goes back to
the queue for the next replica, then the broker link closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from .api.cache import ResultCache
from .api.catalog import ModelCatalog
from .api.client import ApiCaller, call_tracing
from .api.limiter import CallLimiter
from .api.pacer import QuotaPacer
from .api.quota import QuotaLedger
from .api.token import TokenProvider
from .batch.manager import BatchManager
from .broker.connection import BrokerLink
from .broker.intake import Intake
from .broker.lease import Lease
from .broker.replies import ReplyPublisher
from .broker.statestream import StateStream
from .config import ConfigError, Settings, StartupError, check_writable_dir, failure_reason
from .constants import STANDBY
from .logs import get_logger, register_secret
from .ops.endpoints import DaemonView, OperatorEndpoints
from .ops.sdnotify import SystemdNotifier
from .ops.supervisor import Supervisor
from .realtime.worker import SyncWorker
from .replica.role import STANDBY_REASON, ActiveRole
from .replica.sharing import NoSharing, StreamSharing
from .request.answered import AnsweredLog
from .request.dispatch import Dispatcher
from .request.finish import Finisher, Publisher
from .request.outbox import Outbox
from .statedir import StateDir

log = get_logger("coderd")


@contextlib.asynccontextmanager
async def coding_api(settings: Settings):
    """(settings, client secret) for the coding API: the configured one, or with no
    api_url, coderd's built-in emulator, started here and stopped on exit. Credentials
    without api_url are refused (ConfigError): real data never goes to the emulator."""
    if not settings.uses_emulator:
        yield settings, settings.client_secret.get_secret_value()
        return
    if settings.client_id or settings.client_secret is not None:
        # load_settings refuses this already; Settings built another way must not slip through.
        raise ConfigError("config: api_url: required when credentials are configured: without api_url "
                          "coderd would code through its built-in emulator")
    from .emulator import EmulatorServer
    from .emulator.settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    server = await EmulatorServer().start()
    try:
        log.warning("using_builtin_emulator", url=server.url,
                    note="api_url is not set: coding through coderd's BUILT-IN EMULATOR of the coding API, "
                         "not the real ABS service")
        updated = settings.model_copy(update={"api_url": server.url, "auth_url": server.url,
                                              "client_id": DEFAULT_CLIENT_ID})
        yield updated, DEFAULT_CLIENT_SECRET
    finally:
        await server.stop()


@dataclass
class Core:
    """Everything from a request's body to its reply, without the broker edge: the daemon
    runs it behind the intake; tests drive `dispatcher.handle` directly."""

    settings: Settings
    state: StateDir
    tokens: TokenProvider
    limiter: CallLimiter
    ledger: QuotaLedger
    caller: ApiCaller
    catalog: ModelCatalog
    worker: SyncWorker
    batch: BatchManager
    finisher: Finisher
    dispatcher: Dispatcher

    @property
    def components(self) -> tuple:
        """What must be started (in this order) before a request is dispatched."""
        return tuple(c for c in (self.state, self.finisher.answered, self.worker.cache, self.worker, self.batch)
                     if c is not None)


def build_core(settings: Settings, secret: str, session: aiohttp.ClientSession, publisher: Publisher,
               supervisor: Supervisor, sharing: NoSharing | None = None, *, standby: bool = False) -> Core:
    """The core; `standby`: batch jobs wait until the replica is made active (replica/role.py)."""
    tokens = TokenProvider(session, settings.auth_url, settings.client_id, secret, settings.state_dir)
    limiter = CallLimiter(settings.requests_per_second)
    state = StateDir(settings.state_dir, supervisor)
    ledger = QuotaLedger(settings.state_dir, settings.daily_quota, state=state)
    caller = ApiCaller(session, settings.api_url, tokens, limiter, ledger)
    catalog = ModelCatalog(caller)
    answered = AnsweredLog(settings.state_dir, supervisor)
    finisher = Finisher(publisher, Outbox(settings.outbox_dir, settings.state_dir), answered)
    pacer = QuotaPacer(ledger, settings.quota_burst)
    cache = ResultCache(settings.state_dir, max_entries=settings.cache_max_entries, ttl_days=settings.cache_ttl_days,
                        supervisor=supervisor) if settings.cache else None
    worker = SyncWorker(caller, catalog, supervisor, state, pacer, cache,
                        interactive_max_wait=settings.interactive_max_wait_seconds)
    batch = BatchManager(settings, caller, catalog, session, finisher, supervisor, state, cache, sharing,
                         active=not standby)
    dispatcher = Dispatcher(settings, catalog, worker, batch, finisher, state)
    return Core(settings, state, tokens, limiter, ledger, caller, catalog, worker, batch, finisher, dispatcher)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = SystemdNotifier()
        self.ready = asyncio.Event()  # set once consuming (or paused for the quota)
        self.core: Core | None = None
        self.endpoints: OperatorEndpoints | None = None
        self.intake: Intake | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Start, serve until `stop` is set, stop. A start-up failure coderd can name (an
        unwritable state_dir, an unreachable broker, a taken http_listen) raises
        StartupError: one line and an exit code, for `coderd run` to print and return."""
        async with contextlib.AsyncExitStack() as stack:
            # Before anything starts: nothing to undo, and nothing logged, if it fails.
            check_writable_dir(self.settings.state_dir, "state_dir")
            builtin_emulator = self.settings.uses_emulator
            settings, secret = await stack.enter_async_context(coding_api(self.settings))
            for value in [secret, *settings.secret_values()]:
                register_secret(value)
            log.info("starting", settings=settings.public_view(), builtin_emulator=builtin_emulator)
            supervisor = await stack.enter_async_context(Supervisor())
            session = await stack.enter_async_context(aiohttp.ClientSession(trace_configs=[call_tracing()]))
            link = BrokerLink(settings)
            publisher = ReplyPublisher(link, settings.default_reply_queue, settings.request_queue)
            stream = StateStream(link, settings.request_queue)
            sharing = StreamSharing(stream, supervisor)
            core = build_core(settings, secret, session, publisher, supervisor, sharing, standby=True)
            intake = Intake(settings, link, core.dispatcher.handle, publisher)
            await intake.pause(STANDBY, STANDBY_REASON)  # until this replica holds the lease
            lease = Lease(link, settings.request_queue, supervisor)
            role = ActiveRole(lease, stream, sharing, intake, core.batch, core.ledger, core.limiter, supervisor)
            endpoints = OperatorEndpoints(*settings.http_host_port, DaemonView(
                settings, link, intake, core.tokens, core.ledger, core.limiter, core.batch.journal, supervisor,
                core.state, core.worker, builtin_emulator=builtin_emulator, role=role))
            if core.ledger.exhausted:
                await intake.pause("quota", "daily quota used up: consuming resumes at 00:00 UTC")
            self.core, self.endpoints, self.intake = core, endpoints, intake
            try:
                await stack.enter_async_context(endpoints)
            except OSError as exc:
                with contextlib.suppress(Exception):
                    await endpoints.stop()  # it never entered the stack
                raise StartupError(f"http_listen: cannot listen on {settings.http_listen}: "
                                   f"{failure_reason(exc)}") from None
            try:  # fails fast when refused; a silent node times out (BrokerLink's connect timeout)
                await stack.enter_async_context(link)
            except CONNECTION_EXCEPTIONS as exc:
                if link.connected:  # connected, then something else failed: not this message
                    raise
                with contextlib.suppress(Exception):
                    await link.stop()
                nodes = settings.public_view()["amqp_url"]  # passwords masked
                raise StartupError(f"broker: cannot connect to {'any of ' if ',' in nodes else ''}{nodes}: "
                                   f"{failure_reason(exc)}") from None
            for component in (stream, sharing, lease, *core.components, intake, role):
                await stack.enter_async_context(component)
            followers = {"quota-pause": lambda: intake.follow_quota(core.ledger),
                         "state-dir-pause": lambda: intake.follow_state_dir(core.state)}
            for name, follow in followers.items():
                supervisor.start_task(name, follow)
                stack.push_async_callback(supervisor.stop_task, name)  # stopped before the intake
            if self.notifier.enabled and self.notifier.watchdog_interval is not None:
                # From the event loop: if the loop stalls the pings stop and systemd restarts us.
                supervisor.start_task("sd-watchdog", self.notifier.watchdog)
            self.notifier.notify("READY=1", f"STATUS={intake.paused_for}" if intake.paused_for
                                 else f"STATUS=consuming {settings.request_queue}")
            self.ready.set()
            await stop.wait()
            self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing requests in flight")
            core.worker.begin_shutdown()  # what waits for the day's budget goes back to the queue now
        log.info("stopped")
        return 0
