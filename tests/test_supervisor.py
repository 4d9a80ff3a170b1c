"""The supervisor: a crashed, returned or wedged task is logged, counted, recovered and
restarted; meanwhile it is reported as a problem; stopping it is not a crash."""

from __future__ import annotations

import asyncio

import pytest

from daemon.backoff import Backoff
from daemon.ops import metrics
from daemon.ops import supervisor as supervisor_module
from daemon.ops.supervisor import Supervisor

FAST = Backoff(base=0.05, cap=0.05, jitter=False)


def crashes(name: str) -> float:
    return metrics.task_crashes.labels(name)._value.get()


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_crash_is_recovered_counted_reported_and_restarted():
    runs, recovered = [], []
    before = crashes("t-crash")

    async def run():
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("boom")
        await asyncio.Event().wait()

    async with Supervisor(backoff=Backoff(base=0.3, cap=0.3, jitter=False)) as supervisor:
        supervisor.start_task("t-crash", run, on_crash=recovered.append)
        await until(lambda: recovered)
        problems = supervisor.problems()
        await until(lambda: len(runs) == 2)
        assert supervisor.problems() == []
        assert supervisor.tasks["t-crash"].state == "running"
    assert any("t-crash is down" in p and "ValueError: boom" in p for p in problems)
    assert isinstance(recovered[0], ValueError)
    assert crashes("t-crash") - before == 1


async def test_a_task_that_returns_is_restarted_too():
    runs = []

    async def run():
        runs.append(1)

    async with Supervisor(backoff=FAST) as supervisor:
        supervisor.start_task("t-return", run)
        await until(lambda: len(runs) >= 3)
    assert "returned" in supervisor.tasks["t-return"].last_error


async def test_a_task_that_keeps_crashing_is_reported_as_flapping(monkeypatch):
    monkeypatch.setattr(supervisor_module, "FLAPPING_CRASHES", 3)
    runs = []

    async def run():
        runs.append(1)
        if len(runs) <= 3:
            raise RuntimeError("again")
        await asyncio.Event().wait()

    async with Supervisor(backoff=FAST) as supervisor:
        supervisor.start_task("t-flap", run)
        await until(lambda: len(runs) == 4)
        problems = supervisor.problems()
    assert problems == ["task t-flap crashed 3 times in the last 10 minutes (last: RuntimeError: again)"]


async def test_a_wedged_task_is_cancelled_and_restarted_but_an_idle_one_is_left_alone():
    runs, work_waiting = [], [True]

    async def wedges():
        runs.append(1)
        await asyncio.Event().wait()  # no beat, while work waits

    async def idles():
        await asyncio.Event().wait()

    async with Supervisor(wedged_after=0.2, backoff=FAST) as supervisor:
        supervisor.start_task("t-wedge", wedges, busy=lambda: work_waiting[0])
        supervisor.start_task("t-idle", idles, busy=lambda: False)
        await until(lambda: len(runs) >= 2)
        work_waiting[0] = False
        assert supervisor.tasks["t-idle"].recent_crashes() == 0
    assert "TaskWedged" in supervisor.tasks["t-wedge"].last_error


async def test_stopping_is_not_a_crash():
    before = crashes("t-stop")
    started = asyncio.Event()

    async def run():
        started.set()
        await asyncio.Event().wait()

    supervisor = Supervisor()
    supervised = supervisor.start_task("t-stop", run)
    await started.wait()
    await supervisor.stop()
    assert supervised.state == "stopped" and supervised.current.cancelled()
    assert crashes("t-stop") == before and supervisor.problems() == []


async def test_a_failing_recovery_does_not_stop_the_restart():
    runs = []

    async def run():
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first")
        await asyncio.Event().wait()

    def bad_recovery(_error):
        raise KeyError("recovery bug")

    async with Supervisor(backoff=FAST) as supervisor:
        supervisor.start_task("t-recover", run, on_crash=bad_recovery)
        await until(lambda: len(runs) == 2)


@pytest.mark.parametrize("attempt, low, high", [(1, 0.5, 1.0), (3, 2.0, 4.0), (10, 15.0, 30.0)])
def test_backoff_grows_and_is_capped(attempt, low, high):
    delays = [Backoff(base=1.0, cap=30.0).delay(attempt) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert Backoff(base=5.0, cap=60.0, jitter=False).delay(attempt) == min(60.0, 5.0 * 2 ** (attempt - 1))


async def test_a_run_that_fails_before_its_first_await_is_restarted_too():
    calls = []

    def run():  # raises when called, before any coroutine exists
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("at once")
        return asyncio.Event().wait()

    async with Supervisor(backoff=FAST) as supervisor:
        supervisor.start_task("t-sync-raise", run)
        await until(lambda: len(calls) == 2)
        assert supervisor.tasks["t-sync-raise"].state == "running"
