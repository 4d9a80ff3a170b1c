"""The supervisor: every long-lived task of the daemon runs under it.

An unexpected exception is logged with its traceback, counted
(`coderd_task_crashes_total{task}`), handed to the task's `on_crash` (which resumes or
fails the requests the task held), and the task is started again after a back-off. A
task that makes no progress while work is waiting (it calls `beat()` when it does; `busy()`
says whether work waits) is wedged: it is cancelled and restarted the same way. While a
core task is restarting, wedged or restarting too often, `problems()` says so and
/readyz answers 503.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..backoff import Backoff
from ..lifecycle import Component
from ..logs import get_logger
from . import metrics

RESTART_BACKOFF = Backoff(base=1.0, cap=60.0)
FLAPPING_CRASHES, FLAPPING_WINDOW = 5, 600.0  # this many crashes in the window: not ready
WEDGED_AFTER = 120.0  # seconds without progress while work waits

log = get_logger("coderd.supervisor")


class TaskWedged(Exception):
    """A supervised task made no progress for too long while work was waiting."""


@dataclass(eq=False)
class Supervised:
    name: str
    run: Callable[[], Awaitable[None]]
    on_crash: Callable[[BaseException], None] | None = None
    busy: Callable[[], bool] | None = None
    core: bool = True  # a core task being down makes the daemon not ready
    state: str = "starting"  # running, restarting, stopped
    crashes: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    consecutive: int = 0
    last_error: str | None = None
    last_beat: float = field(default_factory=time.monotonic)
    wedged: bool = False
    keeper: asyncio.Task | None = None
    current: asyncio.Task | None = None

    def beat(self) -> None:
        """The task made progress (called by the task itself)."""
        self.last_beat = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_beat

    def recent_crashes(self) -> int:
        horizon = time.monotonic() - FLAPPING_WINDOW
        while self.crashes and self.crashes[0] < horizon:
            self.crashes.popleft()
        return len(self.crashes)


class Supervisor(Component):
    def __init__(self, *, wedged_after: float = WEDGED_AFTER, backoff: Backoff = RESTART_BACKOFF) -> None:
        self.wedged_after, self.backoff = wedged_after, backoff
        self.tasks: dict[str, Supervised] = {}
        self._watch: asyncio.Task | None = None

    def start_task(self, name: str, run: Callable[[], Awaitable[None]], *,
                   on_crash: Callable[[BaseException], None] | None = None,
                   busy: Callable[[], bool] | None = None, core: bool = True) -> Supervised:
        """Run `run()` (a new coroutine each time) until stopped, restarting it when it fails."""
        if name in self.tasks and self.tasks[name].state != "stopped":
            raise ValueError(f"task {name} is already supervised")
        task = Supervised(name, run, on_crash, busy, core)
        self.tasks[name] = task
        task.keeper = asyncio.get_running_loop().create_task(self._keep(task), name=f"supervise-{name}")
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_for_wedges(), name="supervisor-watch")
        return task

    async def stop_task(self, name: str) -> None:
        task = self.tasks.get(name)
        if task is None or task.keeper is None:
            return
        task.keeper.cancel()
        await asyncio.gather(task.keeper, return_exceptions=True)
        task.state = "stopped"

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for name in list(self.tasks):
            await self.stop_task(name)

    def problems(self) -> list[str]:
        """Why the daemon is not ready, as far as its tasks go."""
        found = []
        for task in self.tasks.values():
            if not task.core or task.state == "stopped":
                continue
            if task.state == "restarting":
                found.append(f"task {task.name} is down, restarting after: {task.last_error}")
            elif task.busy is not None and task.busy() and task.idle_for() > self.wedged_after:
                found.append(f"task {task.name} made no progress for {task.idle_for():.0f} s while work waits")
            elif (count := task.recent_crashes()) >= FLAPPING_CRASHES:
                found.append(f"task {task.name} crashed {count} times in the last {FLAPPING_WINDOW / 60:.0f} minutes "
                             f"(last: {task.last_error})")
        return found

    def snapshot(self) -> dict[str, dict]:
        return {t.name: {"state": t.state, "crashes_recent": t.recent_crashes(), "last_error": t.last_error}
                for t in self.tasks.values()}

    async def _keep(self, task: Supervised) -> None:
        while True:
            task.state, task.wedged = "running", False
            task.beat()
            task.current = None
            try:
                task.current = asyncio.get_running_loop().create_task(task.run(), name=task.name)
                await task.current
                error: BaseException = RuntimeError("returned, but it should run until stopped")
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # stopped: not a crash
                    if task.current is not None:
                        task.current.cancel()
                        await asyncio.gather(task.current, return_exceptions=True)
                    raise
                error = (TaskWedged(f"no progress for {task.idle_for():.0f} s while work was waiting")
                         if task.wedged else RuntimeError("cancelled from inside"))
            except Exception as exc:  # noqa: BLE001 - a crash of any kind is what we are here for
                error = exc
            self._crashed(task, error)
            await asyncio.sleep(self.backoff.delay(task.consecutive))

    def _crashed(self, task: Supervised, error: BaseException) -> None:
        task.state = "restarting"
        task.crashes.append(time.monotonic())
        task.consecutive = task.consecutive + 1 if task.idle_for() < 60 else 1
        task.last_error = f"{type(error).__name__}: {error}"
        metrics.task_crashes.labels(task.name).inc()
        log.error("task_crashed", task=task.name, restart_in_attempt=task.consecutive,
                  exc_info=(type(error), error, error.__traceback__))
        if task.on_crash is not None:
            try:
                task.on_crash(error)
            except Exception:  # noqa: BLE001 - recovery must not stop the restart
                log.exception("task_recovery_failed", task=task.name)

    async def _watch_for_wedges(self) -> None:
        while True:
            await asyncio.sleep(self.wedged_after / 4)
            for task in self.tasks.values():
                if (task.state == "running" and task.busy is not None and task.busy()
                        and task.idle_for() > self.wedged_after and task.current is not None):
                    log.error("task_wedged", task=task.name, idle_seconds=round(task.idle_for()))
                    task.wedged = True
                    task.current.cancel()  # _keep turns this into a crash and a restart
