"""The emulator's whole state, shared by its handlers through one app key."""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .accounts import Accounts
from .limits import Limits
from .settings import Clock, EmulatorConfig


@dataclass
class Stats:
    """What the emulator saw, for tests and benchmarks to assert on."""

    token_requests: int = 0
    tokens_issued: int = 0
    v1_calls: int = 0  # admitted /v1 calls (the ones that count against the quota)
    throttled: int = 0  # calls refused because they came too soon: a client's violation
    throttled_gaps: list[float] = field(default_factory=list)  # seconds after the call before
    throttled_calls: list[str] = field(default_factory=list)  # which call came too soon after which
    last_call: str = ""  # the last admitted call (method and path)
    quota_refused: int = 0
    coding_calls: int = 0
    records_coded: int = 0
    records_per_call: list[int] = field(default_factory=list)
    operations_created: int = 0
    uploads: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # /v1 answers by HTTP status

    def count_status(self, status: int) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def record_coding_call(self, records: int) -> None:
        self.coding_calls += 1
        self.records_coded += records
        self.records_per_call.append(records)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock or Clock()
        self.faults = self.config.faults
        self.stats = Stats()
        self.accounts = Accounts(self.config, self.clock)
        self.limits = Limits(self.config, self.clock)
        self.dice = random.Random(self.config.seed)
        self.background: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()  # set when the server shuts down: ends stalls
        self.closing = threading.Event()  # tells batch threads to stop early
        self._tmp: tempfile.TemporaryDirectory | None = None
        if self.config.storage_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coderd-emulator-")
            self.storage = Path(self._tmp.name)
        else:
            self.storage = Path(self.config.storage_dir)
            self.storage.mkdir(parents=True, exist_ok=True)

    def spawn(self, coro) -> None:
        """Run background work, holding a strong reference until it finishes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def idle(self) -> None:
        """Wait until no batch file is being processed."""
        while self.background:
            await asyncio.gather(*self.background, return_exceptions=True)

    async def aclose(self) -> None:
        self.closing.set()
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        self.close()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


EMULATOR = web.AppKey("emulator", Emulator)
CLIENT_ID = web.RequestKey("client_id", str)  # set by the gateway middleware
