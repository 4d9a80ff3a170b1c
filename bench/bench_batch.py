"""Benchmark of the batch route: a 1,000,000-record inputFile through the emulator.

Prints the daemon's peak RSS for a 10,000-record and a 1,000,000-record file (their
ratio shows whether memory grows with file size), and the daemon's own records per
second for spooling and for mapping results back, read off its log's phase events.

Run: .venv/bin/python bench/bench_batch.py   (several minutes: the emulator codes every record)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Broker, DaemonProcess, EmulatorProcess, daemon_env, unique_prefix  # noqa: E402

TITLES = ["truck driver", "registered nurse", "software developer", "chef", "primary school teacher",
          "electrician", "accountant", "retail sales assistant", "aged care worker", "plumber"]


def write_input(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1 << 20) as handle:
        for i in range(count):
            handle.write(json.dumps({"recordId": str(i), "occp_text": TITLES[i % len(TITLES)],
                                     "tasks_text": f"daily duties number {i % 1000}"}) + "\n")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


async def run_file(api: EmulatorProcess, workdir: Path, count: int) -> tuple[float, float, float]:
    state = workdir / f"state-{count}"
    write_input(state / "inbox" / "input.jsonl", count)
    broker = await Broker(unique_prefix()).open()
    env = daemon_env(api.url, broker, state, tier="partner", requests_per_second=5, batch_poll_seconds=1)
    daemon = await DaemonProcess(env, workdir / f"coderd-{count}.log").start()
    await daemon.wait_for_event("consuming")
    await broker.publish({"topic": "anzsco", "inputFile": "input.jsonl"}, correlation_id="bench")
    [(_, reply)] = await broker.replies(1, timeout=3600)
    assert reply["status"] == "completed" and reply["output"]["records"] == count, reply
    await daemon.wait_for_event("request_done")  # logged just after the reply is confirmed
    rss = peak_rss_mb(daemon.process.pid)
    events = daemon.events()
    journaled = stamp(next(e for e in events if e.get("event") == "request_journaled"))
    spooled = stamp(next(e for e in events if e.get("event") == "batch_phase" and e.get("phase") == "creating"))
    delivering = stamp(next(e for e in events if e.get("event") == "batch_phase" and e.get("phase") == "delivering"))
    done = stamp(next(e for e in events if e.get("event") == "request_done" and e.get("route") == "batch"))
    await daemon.terminate()
    await broker.close()
    return rss, count / (spooled - journaled), count / (done - delivering)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with EmulatorProcess(rate=10, latency=0, processing_seconds=0) as api:
            small_rss, _, _ = await run_file(api, workdir, 10_000)
            big_rss, spool_rate, map_rate = await run_file(api, workdir, 1_000_000)
    print(f"peak RSS of the daemon: 10,000 records {small_rss:.0f} MB, 1,000,000 records {big_rss:.0f} MB "
          f"(ratio {big_rss / small_rss:.2f})")
    print(f"1,000,000 records: spooling {spool_rate:,.0f} records/s, mapping back and writing "
          f"{map_rate:,.0f} records/s")


if __name__ == "__main__":
    asyncio.run(main())
