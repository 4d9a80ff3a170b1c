"""Failover benchmark: how long replies stop when what coderd runs on dies, side by side.

  (a) a broker node: a three-node RabbitMQ cluster on this machine (scripts/cluster), one
      coderd given all three nodes; kill -9 of the node hosting the request queue's leader
      (coderd's first node, so its connection dies with the leader; the node changes from
      run to run). The benchmark's own client is on another node.
  (b) a replica: three coderd replicas, each with its own state_dir, on the local broker
      (127.0.0.1:5672); kill -9 of the active one (the one answering).

Each run: the emulator in a process of its own at 10 calls/s (the pace is not what is
measured: at 1 call/s replies would come in bursts a second apart), coderd at 10 requests/s,
a steady load of 200 single-record requests/s (publisher confirms) on fresh queues; the kill
4 s in, the load for 8 s more, then every reply awaited. Failover time = the longest pause
in replies from the kill on: from the last reply before it to the first after it (replies
already in flight at the kill still arrive at once, before it); "from the kill" is the first
reply after the pause, timed from the kill. Also per case: requests lost (must be 0),
duplicate replies, throttle violations the emulator saw (must be 0).

Run: .venv/bin/python bench/bench_failover.py [--runs 3] [--rate 200]   (about 3 minutes:
the cluster's start takes some 15 s, each run 20-25 s)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster, ClusterBroker, ReplyLog, installed  # noqa: E402
from harness import AMQP_URL, DaemonProcess, EmulatorProcess, daemon_env, unique_prefix  # noqa: E402

API_RATE = 10.0  # calls/s, emulator and coderd alike
BEFORE, AFTER = 4.0, 8.0  # seconds of load before the kill and after it
NOTABLE = ("broker_connection_lost", "broker_reconnected", "task_crashed", "request_already_answered")


@dataclass
class Result:
    stall: float  # seconds without replies around the kill
    resumed: float  # seconds from the kill to the first reply after the pause
    lost: int
    duplicates: int
    throttled: int
    note: str


def request(i: int) -> dict:
    return {"topic": "anzsco", "record": {"recordId": str(i), "occp_text": "truck driver",
                                          "tasks_text": f"delivering freight {i}"}}


class SteadyLoad:
    """Publishes `rate` requests a second, a batch every 50 ms, each confirmed, until stopped."""

    def __init__(self, broker: ClusterBroker, rate: float) -> None:
        self.broker, self.rate, self.sent = broker, rate, 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> "SteadyLoad":
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - began) * self.rate)
            await asyncio.gather(*(self.broker.publish(request(i), correlation_id=f"c{i}")
                                   for i in range(self.sent, due)))
            self.sent = max(self.sent, due)
            await asyncio.sleep(0.05)

    async def stop(self) -> set[str]:
        self._stop.set()
        await self._task
        return {f"c{i}" for i in range(self.sent)}


async def measure(broker: ClusterBroker, api: EmulatorProcess, rate: float, kill) -> Result:
    """The load, the kill (`kill()` returns when it killed, and what), the load again, every
    reply awaited."""
    replies = await ReplyLog().start(broker)
    load = SteadyLoad(broker, rate).start()
    await asyncio.sleep(BEFORE)
    killed_at, note = await kill()
    await asyncio.sleep(AFTER)
    expected = await load.stop()
    missing = await replies.wait_all(expected, timeout=120)
    await replies.stop()
    last_before, resumed = replies.stall(killed_at)
    return Result(resumed - last_before, resumed - killed_at, len(missing), replies.duplicates, api.stats.throttled,
                  note)


async def node_failover(cluster: Cluster, run: int, rate: float, workdir: Path) -> Result:
    # coderd's first node changes from run to run; it declares the queues, so their leaders
    # are placed there (client-local), and its connection dies with the leader.
    first = run % 3 + 1
    urls = cluster.urls[first - 1:] + cluster.urls[:first - 1]
    broker = ClusterBroker(unique_prefix(), url="")
    async with EmulatorProcess(rate=API_RATE) as api:
        env = daemon_env(api.url, broker, workdir / f"a{run}-state", amqp_url=",".join(urls),
                         requests_per_second=API_RATE)
        daemon = await DaemonProcess(env, workdir / f"a{run}.log").start()
        victim = None
        try:
            await daemon.wait_for_event("consuming", timeout=60)
            victim = await cluster.leader(broker.request_queue, via=first)
            broker.url = cluster.urls[victim % 3]  # the next node: not the victim
            await broker.open()

            async def kill() -> tuple[float, str]:
                killed_at = time.monotonic()
                await cluster.kill(victim)
                return killed_at, f"node {victim}"

            result = await measure(broker, api, rate, kill)
            events = Counter(e.get("event") for e in daemon.events())
            result.note += "; coderd: " + ", ".join(f"{events[e]} {e}" for e in NOTABLE if events[e])
            return result
        finally:
            await daemon.kill()
            if victim is not None:
                await cluster.start_node(victim)  # before deleting the queues (see tests/test_cluster.py)
            if broker.connection is not None:
                await broker.close()


async def replica_failover(run: int, rate: float, workdir: Path) -> Result:
    broker = await ClusterBroker(unique_prefix(), url=AMQP_URL).open()  # quorum reply queue, one node
    async with EmulatorProcess(rate=API_RATE) as api:
        replicas = []
        try:
            for r in range(3):
                env = daemon_env(api.url, broker, workdir / f"b{run}-state{r}", requests_per_second=API_RATE)
                replicas.append(await DaemonProcess(env, workdir / f"b{run}-replica{r}.log").start())
            for replica in replicas:
                await replica.wait_for_event("http_listening", timeout=60)

            def done() -> list[int]:
                return [sum(e.get("event") == "request_done" for e in r.events()) for r in replicas]

            killed: list[int] = []

            async def kill() -> tuple[float, str]:
                # The active replica: the one answering (one at a time: the others stand by).
                before = done()
                await asyncio.sleep(0.5)
                answering = [a - b for a, b in zip(done(), before)]
                killed.append(answering.index(max(answering)))
                killed_at = time.monotonic()
                await replicas[killed[0]].kill()
                return killed_at, f"replica {killed[0] + 1}, the only one answering" if answering.count(0) == 2 \
                    else f"replica {killed[0] + 1}, the busiest of {3 - answering.count(0)} answering"

            result = await measure(broker, api, rate, kill)
            counts = done()
            took_over = [r + 1 for r, n in enumerate(counts) if n and r != killed[0]]
            result.note += f" (answered {counts[killed[0]]}); then replica {' and '.join(map(str, took_over))} " \
                           f"(answered {', '.join(str(counts[r - 1]) for r in took_over)})"
            return result
        finally:
            for replica in replicas:
                await replica.kill()
            await broker.close()


def summary(name: str, results: list[Result]) -> list[str]:
    stalls, resumed = [r.stall for r in results], [r.resumed for r in results]
    return [f"{name}",
            f"  failover (last reply before -> first after): min {min(stalls):.2f} s, "
            f"median {statistics.median(stalls):.2f} s, max {max(stalls):.2f} s",
            f"  first reply after the pause, from the kill:  min {min(resumed):.2f} s, "
            f"median {statistics.median(resumed):.2f} s, max {max(resumed):.2f} s",
            f"  lost {sum(r.lost for r in results)}, duplicates {sum(r.duplicates for r in results)} "
            f"({', '.join(str(r.duplicates) for r in results)}), "
            f"throttle violations {sum(r.throttled for r in results)}",
            *(f"    run {i + 1}: {r.stall:.2f} s ({r.note})" for i, r in enumerate(results))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="requests published per second")
    parser.add_argument("--logs", type=Path, help="keep coderd's logs in this directory")
    args = parser.parse_args()
    if not installed():
        print("rabbitmq-server is not installed: no cluster for case (a)", file=sys.stderr)
        return 2
    started = time.monotonic()
    nodes, replicas = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print("starting the cluster (scripts/cluster start) ...", file=sys.stderr, flush=True)
        cluster = await asyncio.to_thread(Cluster.start)
        try:
            for run in range(args.runs):  # the two cases taking turns: whatever load the machine
                print(f"run {run + 1}: (a) node ...", file=sys.stderr, flush=True)  # has, both share it
                nodes.append(await node_failover(cluster, run, args.rate, workdir))
                print(f"run {run + 1}: (b) replica ...", file=sys.stderr, flush=True)
                replicas.append(await replica_failover(run, args.rate, workdir))
        finally:
            await asyncio.to_thread(Cluster.stop)
    print(f"failover under a steady load of {args.rate:.0f} requests/s (API {API_RATE:.0f} calls/s), "
          f"kill -9 {BEFORE:.0f} s in, {args.runs} runs each:")
    print("\n".join(summary("(a) the cluster node hosting the request queue's leader", nodes)))
    print("\n".join(summary("(b) the active one of three coderd replicas (local broker)", replicas)))
    print(f"total run time {time.monotonic() - started:.0f} s")
    bad = sum(r.lost + r.throttled for r in nodes + replicas)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
