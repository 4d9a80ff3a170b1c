"""Benchmark of `coderd run` against the emulator and the local broker.

Prints, from one run:
  1. saturation at the API's real limit (1 call/s, ~1 s a call): records per coding call
     and records per second, each as a ratio to the limit (300 x requests_per_second);
  2. a lone request's latency over the emulator's own latency: median and p99 added;
  3. throughput with the emulator unthrottled and instant, as a ratio to a bare aio-pika
     consumer that only replies to each message, on the same broker.

Run: .venv/bin/python bench/bench_daemon.py   (takes about two minutes)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import AMQP_URL, Broker, DaemonProcess, EmulatorProcess, daemon_env, unique_prefix  # noqa: E402

RECORD = {"occp_text": "truck driver", "tasks_text": "delivering freight"}


async def start_daemon(api: EmulatorProcess, broker: Broker, workdir: Path, **settings) -> DaemonProcess:
    # The product's default pacing (the harness turns it off for tests); the cache off, so
    # that a repeated text costs a call as it did before there was one.
    env = daemon_env(api.url, broker, workdir / "state", log_format="json",
                     **{"quota_burst": "0.05", "cache": "false", **settings})
    daemon = await DaemonProcess(env, workdir / f"{broker.prefix}.log").start()
    await daemon.wait_for_event("consuming")
    return daemon


async def collect(broker: Broker, count: int, stamps: list[float]) -> None:
    queue = await broker.channel.declare_queue(broker.reply_queue, durable=True)
    done = asyncio.Event()

    async def take(message):
        await message.ack()
        stamps.append(time.monotonic())
        if len(stamps) >= count:
            done.set()

    tag = await queue.consume(take)
    await done.wait()
    await queue.cancel(tag)


async def publish_many(broker: Broker, count: int) -> None:
    for i in range(count):  # texts of their own: repeats would share the API's records
        body = json.dumps({"topic": "anzsco", "record": {**RECORD, "tasks_text": f"delivering freight {i}"}}).encode()
        await broker.channel.default_exchange.publish(
            aio_pika.Message(body, correlation_id=str(i), reply_to=broker.reply_queue),
            routing_key=broker.request_queue)


async def saturation(workdir: Path) -> tuple[float, float]:
    count = 9000
    async with EmulatorProcess(rate=1.0, latency=1.0) as api:
        broker = await Broker(unique_prefix()).open()
        daemon = await start_daemon(api, broker, workdir, tier="partner", daily_quota=10000, batch_threshold=10**6)
        stamps: list[float] = []
        collector = asyncio.create_task(collect(broker, count, stamps))
        await publish_many(broker, count)
        await collector
        await daemon.terminate()
        await broker.close()
        stats = api.stats
        full = stats.records_per_call
        # Steady state: between the 10% and 90% marks, away from start-up and the tail.
        lo, hi = stamps[count // 10], stamps[count * 9 // 10]
        per_second = (count * 8 // 10) / (hi - lo)
        per_call = statistics.mean(full[1:-1]) if len(full) > 2 else statistics.mean(full)
        print(f"  ({len(full)} coding calls; mean over all of them {statistics.mean(full):.1f} records, "
              f"the first and last being the ramp and the remainder)")
        return per_call / 300, per_second / 300, stats.throttled


async def lone_latency(workdir: Path) -> tuple[float, float]:
    latency = 0.3
    async with EmulatorProcess(rate=1.0, latency=latency) as api:
        broker = await Broker(unique_prefix()).open()
        # A quiet day: the 62 requests of this minute are well within the burst allowance
        # (5 % of 10,000 calls); with a public 1,000 they would be paced after the 50th.
        daemon = await start_daemon(api, broker, workdir, daily_quota=10000)
        samples = []
        for i in range(62):
            started = time.monotonic()
            await broker.publish({"topic": "anzsco", "record": RECORD}, correlation_id=str(i))
            await broker.replies(1)
            samples.append(time.monotonic() - started - latency)
            await asyncio.sleep(1.1)  # a lone request: the limiter's slot is free again
        await daemon.terminate()
        await broker.close()
    samples = sorted(samples[2:])  # the first resolves the topic's model and sets the hand-over guard
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


async def replies_per_second(broker: Broker, count: int) -> float:
    """Publish `count` requests and time until the last reply is in."""
    stamps: list[float] = []
    collector = asyncio.create_task(collect(broker, count, stamps))
    started = time.monotonic()
    await publish_many(broker, count)
    await collector
    return count / (stamps[-1] - started)


async def bare_consumer_rate(count: int) -> float:
    broker = await Broker(unique_prefix()).open()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(broker.request_queue, durable=True, arguments={"x-queue-type": "quorum"})

    async def reply(message):
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"status":"completed"}', correlation_id=message.correlation_id),
            routing_key=message.reply_to)
        await message.ack()

    await queue.consume(reply)
    rate = await replies_per_second(broker, count)
    await connection.close()
    await broker.close()
    return rate


async def daemon_rate(workdir: Path, count: int) -> float:
    async with EmulatorProcess(rate=0, latency=0) as api:
        broker = await Broker(unique_prefix()).open()
        daemon = await start_daemon(api, broker, workdir, requests_per_second=1000, daily_quota=10**6)
        rate = await replies_per_second(broker, count)
        await daemon.terminate()
        await broker.close()
        return rate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        per_call, per_second, throttled = await saturation(workdir)
        print("saturation (1 call/s, 1 s latency, 9000 single-record requests):")
        print(f"  records per coding call (steady state): {per_call:.3f} of 300")
        print(f"  records per second:      {per_second:.3f} of 300/s")
        print(f"  throttle violations seen by the emulator: {throttled}")
        median, p99 = await lone_latency(workdir)
        print(f"lone request, added over the emulator's latency: median {median:.1f} ms, p99 {p99:.1f} ms")
        count = 5000
        bare = await bare_consumer_rate(count)
        ours = await daemon_rate(workdir, count)
        print(f"unthrottled, instant API ({count} requests): coderd {ours:.0f}/s, bare aio-pika consumer "
              f"{bare:.0f}/s, ratio {ours / bare:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
