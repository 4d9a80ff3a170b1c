"""inputFile requests against a producer who races the daemon: inbox entries swapped, while
requests are processed, for a symlink out of the inbox or for a FIFO; and files with
lines too long to hold. In-process core (fake broker), emulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from inprocess import running_core

from daemon.request import records as records_module

MARKER = "SECRET-7f3a"  # in the files outside the inbox only
INSIDE = {
    "race.jsonl": b'{"recordId": "in", "occp_text": "registered nurse", "tasks_text": "caring"}\n',
    "race.csv": b"recordId,occp_text,tasks_text\nin,registered nurse,caring\n",
}
OUTSIDE = {  # what a leak would look like: coded records, or a header quoted in an error
    "race.jsonl": f'{{"recordId": "{MARKER}", "occp_text": "{MARKER} chef", "tasks_text": "cooking"}}\n',
    "race.csv": f'password = "{MARKER}"\n',
}
PEAK_KB = 12 * 1024  # reading a bounded line takes a few 1 MiB buffers (3-5 MB measured); a whole one, 100+
SETTLE = 30.0  # seconds for every request to be answered: a hang fails the test, never blocks the suite


class Swapper(threading.Thread):
    """Keeps replacing an inbox entry (atomically: it always exists) by a regular file, then
    by whatever `other` makes, until stopped."""

    def __init__(self, entry: Path, content: bytes, other) -> None:
        super().__init__(name="swapper", daemon=True)
        self.entry, self.content, self.other = entry, content, other
        self.stopped = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        temp = self.entry.with_name(".swapping")
        while not self.stopped.is_set():
            temp.write_bytes(self.content)
            os.replace(temp, self.entry)
            time.sleep(0.001)  # the other state lasts longer anyway (it waits for the GIL)
            self.other(temp)
            os.replace(temp, self.entry)
            time.sleep(0.0003)
            self.swaps += 1

    def __enter__(self) -> "Swapper":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join(5)


async def deliver_all(core, bodies: list[dict], *, batch: bool) -> list:
    """Deliver concurrently, a few ms apart (so the requests meet the entry in both of its
    states); returns the messages once each has its reply (batch: later)."""
    started = []
    for body in bodies:
        started.append(core.start(body))
        await asyncio.sleep(0.003)
    await asyncio.wait_for(asyncio.gather(*(task for _, task in started)), SETTLE)
    messages = [message for message, _ in started]
    deadline = time.monotonic() + SETTLE
    while batch and not all(core.publisher.for_id(m.correlation_id) for m in messages):
        assert time.monotonic() < deadline, "a journaled request was never answered"
        await asyncio.sleep(0.05)
    return messages


def check_answers(core, messages, name: str, *, refusal: str) -> dict[str, int]:
    """Exactly one reply each, acked; completed from the inbox file, or refused with
    `refusal` naming the file as sent; the outside file's content in no reply and no output."""
    outcomes = {"completed": 0, refusal: 0}
    for message in messages:
        assert message.settled == ["ack"]
        reply = core.reply(message)  # exactly one
        if reply["status"] == "completed":
            outcomes["completed"] += 1
            assert reply["output"]["records"] == 1 and reply["output"]["invalid"] == 0
        else:
            assert reply["error"]["code"] == refusal, reply["error"]
            assert f"file {name!r} " in reply["error"]["message"]
            assert str(core.settings.inbox_dir) not in reply["error"]["message"]
            outcomes[refusal] += 1
    assert not [p.raw for p in core.publisher.replies if MARKER.encode() in p.raw]
    for output in core.settings.outbox_dir.rglob("*"):
        assert not output.is_file() or MARKER.encode() not in output.read_bytes(), output
    return outcomes


def outside_files(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, content in OUTSIDE.items():
        (outside / name).write_text(content)
    return outside


@pytest.mark.parametrize("name, tier, requests", [("race.jsonl", "public", 80), ("race.csv", "public", 80),
                                                  ("race.jsonl", "partner", 30)])
async def test_an_entry_swapped_for_a_symlink_out_is_never_read(make_emulator, tmp_path, name, tier, requests):
    api = await make_emulator()
    outside = outside_files(tmp_path)
    async with running_core(api.url, tmp_path, tier=tier) as core:
        core.settings.inbox_dir.mkdir(parents=True)
        bodies = [{"topic": "anzsco", "inputFile": name, "outputFile": f"out/{i}.jsonl"} for i in range(requests)]
        with Swapper(core.settings.inbox_dir / name, INSIDE[name], lambda t: t.symlink_to(outside / name)) as swapper:
            messages = await deliver_all(core, bodies, batch=tier == "partner")
        outcomes = check_answers(core, messages, name, refusal="path_not_allowed")
    assert swapper.swaps > 20 and outcomes["completed"] > 0, (swapper.swaps, outcomes)


class FifoWatchdog(threading.Thread):
    """After `after` seconds, keeps letting go any thread stuck opening `fifo` for reading
    (it then reads an empty file), so a regression fails the test instead of hanging the
    suite, even with the event loop itself stuck. `released`: whether it ever had to."""

    def __init__(self, fifo: Path, after: float) -> None:
        super().__init__(name="fifo-watchdog", daemon=True)
        self.fifo, self.after = fifo, after
        self.stopped = threading.Event()
        self.released = False

    def run(self) -> None:
        self.stopped.wait(self.after)
        while not self.stopped.wait(0.01):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
                self.released = True
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody is waiting
                    raise

    def __enter__(self) -> "FifoWatchdog":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join(5)


@pytest.mark.parametrize("name", ["race.jsonl", "race.csv"])
async def test_an_entry_swapped_for_a_fifo_never_blocks(make_emulator, tmp_path, name):
    api = await make_emulator()
    fifo = tmp_path / "fifo"  # one FIFO, hard-linked into the inbox: stuck readers can be let go
    os.mkfifo(fifo)
    async with running_core(api.url, tmp_path) as core:
        core.settings.inbox_dir.mkdir(parents=True)
        bodies = [{"topic": "anzsco", "inputFile": name, "outputFile": f"out/{i}.jsonl"} for i in range(80)]
        with FifoWatchdog(fifo, after=SETTLE) as watchdog:
            with Swapper(core.settings.inbox_dir / name, INSIDE[name], lambda t: os.link(fifo, t)) as swapper:
                messages = await deliver_all(core, bodies, batch=False)
        assert not watchdog.released, "a thread was stuck opening the FIFO"
        outcomes = check_answers(core, messages, name, refusal="input_not_found")
        assert all("is not a regular file" in core.reply(m)["error"]["message"]
                   for m in messages if core.reply(m)["status"] == "failed")
        # the worker threads are all free: a plain file request is answered at once
        (core.settings.inbox_dir / "plain.jsonl").write_bytes(INSIDE["race.jsonl"])
        plain = await asyncio.wait_for(core.deliver({"topic": "anzsco", "inputFile": "plain.jsonl"}), 10)
        assert core.reply(plain)["status"] == "completed"
    assert swapper.swaps > 20 and outcomes["completed"] > 0 and outcomes["input_not_found"] > 0, (
        swapper.swaps, outcomes)


# --- lines too long to hold ---------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


@contextlib.contextmanager
def peak_growth_kb():
    """Yields a list that gets the process's peak RSS growth (kB) over the block."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pytest.skip("needs /proc/self/clear_refs to measure peak memory")
    before, growth = _status_kb("VmRSS"), []
    yield growth
    growth.append(_status_kb("VmHWM") - before)


@contextlib.asynccontextmanager
async def loop_gaps():
    """Yields a list that gets the longest the event loop went without running a tick (s)."""
    gaps, stop = [0.0], asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps[0], last = max(gaps[0], now - last), now

    ticker = asyncio.create_task(tick())
    yield gaps
    stop.set()
    await ticker


@pytest.mark.parametrize("tier", ["public", "partner"])
async def test_a_512_mb_csv_header_is_refused_without_reading_it(make_emulator, tmp_path, tier):
    api = await make_emulator()
    async with running_core(api.url, tmp_path, tier=tier) as core:
        core.settings.inbox_dir.mkdir(parents=True)
        with open(core.settings.inbox_dir / "huge.csv", "wb") as huge:
            huge.write(b"recordId,occp_text,tasks_text," + b"a" * (4 << 20))
            huge.truncate(512 << 20)  # sparse: no newline anywhere
        with peak_growth_kb() as growth:
            async with loop_gaps() as gaps:
                [message] = await deliver_all(core, [{"topic": "anzsco", "inputFile": "huge.csv"}],
                                              batch=tier == "partner")
        reply = core.reply(message)
    assert growth[0] < PEAK_KB, f"peak RSS grew by {growth[0]} kB"
    assert gaps[0] < 0.5, f"the event loop stalled for {gaps[0]:.2f} s"
    assert reply["status"] == "failed" and reply["error"]["code"] == "invalid_message"
    assert reply["error"]["message"] == f"the CSV header line is longer than {1 << 20} characters"


@pytest.mark.parametrize("name", ["long.csv", "long.jsonl"])
async def test_an_overlong_data_line_is_an_invalid_record_in_flat_memory(make_emulator, tmp_path, name):
    api = await make_emulator()
    good = INSIDE["race.csv"] if name.endswith(".csv") else INSIDE["race.jsonl"] * 2
    first, last = good.splitlines(keepends=True)[0], good.splitlines(keepends=True)[1]
    async with running_core(api.url, tmp_path) as core:
        core.settings.inbox_dir.mkdir(parents=True)
        with open(core.settings.inbox_dir / name, "wb") as long:
            long.write(first + b"x,")
            long.writelines(b"a" * (1 << 20) for _ in range(48))  # a 48 MB line
            long.write(b"\n" + last)
        with peak_growth_kb() as growth:
            async with loop_gaps() as gaps:
                message = await asyncio.wait_for(core.deliver({"topic": "anzsco", "inputFile": name}), SETTLE)
        reply = core.reply(message)
        output = (core.settings.outbox_dir / name).with_suffix(".coded.jsonl")
        results = [json.loads(line) for line in output.read_text().splitlines()]
    assert growth[0] < PEAK_KB, f"peak RSS grew by {growth[0]} kB"
    assert gaps[0] < 0.5, f"the event loop stalled for {gaps[0]:.2f} s"
    assert reply["status"] == "completed"
    expected_records = 2 if name.endswith(".csv") else 3
    assert reply["output"]["records"] == expected_records and reply["output"]["invalid"] == 1
    unit = "characters" if name.endswith(".csv") else "bytes"
    assert results[-2]["codeStatus"] == "invalid"
    assert results[-2]["error"] == f"line 2 is longer than {records_module.MAX_LINE_BYTES} {unit}"
