"""Real faults: SIGKILL, broker restarts, cut and stalled connections, replicas, the quota."""

import asyncio
import json
import subprocess

import aio_pika
import pytest
from conftest import quiet_config
from harness import AMQP_URL, EmulatorProcess
from proxy import TcpProxy

from daemon.constants import DELIVERY_LIMIT
from daemon.emulator import ThreadedEmulatorServer as EmulatorServer


def requests(n: int, prefix: str = "c"):
    return [({"topic": "anzsco", "record": {"recordId": str(i), "occp_text": "electrician",
                                            "tasks_text": f"wiring houses {i}"}}, f"{prefix}{i}") for i in range(n)]


async def publish_all(broker, items):
    for body, cid in items:
        await broker.publish(body, correlation_id=cid)


async def answered(broker, expected: set[str], timeout: float = 90) -> dict[str, dict]:
    return await broker.answered(expected, timeout=timeout)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
async def api():
    async with EmulatorProcess(rate=4.0, latency=0.2) as server:
        yield server


async def test_sigkill_mid_run_then_restart_answers_everything(coderd, broker, api, tmp_path):
    daemon = await coderd(api, requests_per_second=4)
    items = requests(1500)
    await publish_all(broker, items)
    await daemon.wait_for_event("request_done", count=200, timeout=60)
    await daemon.kill()
    assert api.stats.token_requests == 1
    await coderd(api, requests_per_second=4)
    replies = await answered(broker, {cid for _, cid in items})
    assert all(r["status"] == "completed" for r in replies.values())
    assert api.stats.token_requests == 1  # the restart reused the cached token
    assert api.stats.throttled == 0, api.stats.throttled_gaps


async def test_broker_restart_mid_run_loses_nothing(coderd, broker, api):
    await coderd(api, requests_per_second=4)
    items = requests(800)
    await publish_all(broker, items)
    await asyncio.sleep(1.0)
    try:
        rabbitmqctl("stop_app")
        await asyncio.sleep(2)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    replies = await answered(broker, {cid for _, cid in items}, timeout=120)
    assert all(r["status"] == "completed" for r in replies.values())
    assert api.stats.throttled == 0, api.stats.throttled_gaps


async def test_cut_broker_connections_lose_nothing_and_code_nothing_twice(coderd, broker):
    """Three cuts during 600 requests: every request answered; a request delivered again
    after its reply was confirmed is not coded or answered again, so duplicates (and extra
    API records) come only from replies in flight at a cut; each cut is one warning line."""
    async with EmulatorProcess(rate=2.0, latency=0.5) as api:
        proxy = await TcpProxy("127.0.0.1", 5672).start()
        try:
            daemon = await coderd(api, requests_per_second=2, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
            items = [(body | {"numberOfSuggestions": i % 5}, cid) for i, (body, cid) in enumerate(requests(600))]
            await publish_all(broker, items)
            for cut in range(3):
                await daemon.wait_for_event("request_done", count=150 * (cut + 1), timeout=60)
                proxy.cut()
                await daemon.wait_for_event("broker_reconnected", count=cut + 1, timeout=60)
            counts = await broker.reply_counts({cid for _, cid in items}, timeout=90)
        finally:
            await proxy.stop()
        duplicates = sum(counts.values()) - len(counts)
        events = [e.get("event") for e in daemon.events()]
        assert len(counts) == 600
        assert duplicates < 150, duplicates  # at most what was in flight at the cuts
        # Records already coded are spent again only for calls in flight at a cut (at this rate
        # and latency, at most two calls of 200 records each).
        assert api.stats.records_coded - 600 <= 3 * 2 * 200
        assert events.count("broker_connection_lost") == 3 and "request_error" not in events
        assert "Traceback" not in daemon.log_text()


async def test_failover_to_the_next_broker_node(coderd, broker, api):
    dead_node = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens there
    await coderd(api, requests_per_second=4, amqp_url=f"{dead_node},{AMQP_URL}")
    items = requests(5)
    await publish_all(broker, items)
    replies = await answered(broker, {cid for _, cid in items})
    assert len(replies) == 5


async def test_when_its_node_goes_away_the_connection_moves_to_the_next(coderd, broker, api):
    proxy = await TcpProxy("127.0.0.1", 5672).start()  # stands in for a node that will die
    daemon = await coderd(api, requests_per_second=4, amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/,{AMQP_URL}")
    await publish_all(broker, requests(3, "before"))
    await answered(broker, {f"before{i}" for i in range(3)})
    await proxy.stop()  # the node is gone: connections cut, new ones refused
    await daemon.wait_for_event("broker_reconnected", timeout=60)
    await publish_all(broker, requests(3, "after"))
    replies = await answered(broker, {f"after{i}" for i in range(3)})
    assert len(replies) == 3
    assert any(e.get("event") == "broker_next_node" for e in daemon.events())


async def test_stalled_and_cut_api_connections_are_retried(coderd, broker):
    async with EmulatorProcess(rate=4.0) as server:
        proxy = await TcpProxy("127.0.0.1", server.port).start()
        try:
            url = f"http://127.0.0.1:{proxy.port}"
            daemon = await coderd(server, requests_per_second=4, api_url=url, auth_url=url)
            await broker.publish({"topic": "anzsco", "record": {"occp_text": "nurse", "tasks_text": "care"}},
                                 correlation_id="warm")
            await broker.replies(1)
            server.faults.stall, server.faults.stall_seconds = 1, 120  # the next call hangs
            await broker.publish({"topic": "anzsco", "record": {"occp_text": "chef", "tasks_text": "cooking"}},
                                 correlation_id="stalled")
            [(cid, reply)] = await broker.replies(1, timeout=60)
            assert cid == "stalled" and reply["status"] == "completed"
            proxy.stall()  # bytes stop flowing on open connections; new ones too
            await broker.publish({"topic": "anzsco", "record": {"occp_text": "pilot", "tasks_text": "flying"}},
                                 correlation_id="cut")
            await asyncio.sleep(1)
            proxy.cut()
            proxy.resume()
            [(cid, reply)] = await broker.replies(1, timeout=60)
            assert cid == "cut" and reply["status"] == "completed"
            assert any(e.get("event") == "coding_call_failed" for e in daemon.events())
        finally:
            await proxy.stop()


async def test_two_replicas_share_the_work_safely(coderd, broker, tmp_path):
    async with EmulatorProcess(rate=4.0, latency=0.2) as api:
        shared = tmp_path / "shared-state"
        first = await coderd(api, state_dir=shared, requests_per_second=4)
        second = await coderd(api, state_dir=shared, requests_per_second=4)
        items = requests(2400)
        await publish_all(broker, items)

        def done(daemon) -> int:
            return sum(e.get("event") == "request_done" for e in daemon.events())

        while done(first) + done(second) < 300:
            await asyncio.sleep(0.05)
        assert min(done(first), done(second)) == 0  # single active consumer: one works, one stands by
        active, standby = (first, second) if done(first) else (second, first)
        await active.kill()
        assert done(active) < len(items)
        replies = await answered(broker, {cid for _, cid in items}, timeout=120)
        assert all(r["status"] == "completed" for r in replies.values())
        assert any(e.get("event") == "request_done" for e in standby.events())  # it took over
        assert api.stats.throttled == 0, api.stats.throttled_gaps
        assert api.stats.token_requests == 1


async def test_quota_used_up_stops_consuming_and_requests_wait_in_the_queue(coderd, broker):
    async with EmulatorServer(quiet_config(requests_per_second=10.0, daily_quota={"public": 3, "partner": 3})) as api:
        daemon = await coderd(api, requests_per_second=10)
        await publish_all(broker, requests(2, "a"))
        await answered(broker, {"a0", "a1"})
        big = [{"recordId": str(i), "occp_text": "welder", "tasks_text": f"joining metal {i}"} for i in range(300)]
        for n in range(6):  # 300 records each: one call each
            await broker.publish({"topic": "anzsco", "records": big}, correlation_id=f"b{n}")
        await daemon.wait_for_event("quota_exhausted", timeout=60)
        await asyncio.sleep(1)
        channel = await broker.connection.channel()
        queue = await channel.declare_queue(broker.request_queue, passive=True)
        done = sum(e.get("event") == "request_done" for e in daemon.events())
        assert done < 8
        assert queue.declaration_result.message_count == 8 - done  # all waiting, none held unacked
        assert queue.declaration_result.consumer_count == 0
        assert api.stats.quota_refused <= 1
        state = json.loads((daemon.log_path.parent / "state" / "quota.json").read_text())
        assert state["used"] >= 3


async def test_ledger_limit_is_honoured_across_restarts(coderd, broker, api, tmp_path):
    daemon = await coderd(api, requests_per_second=4, daily_quota=5)
    await publish_all(broker, requests(2, "a"))
    await answered(broker, {"a0", "a1"})  # the topic list, the latest model, one or two coding calls
    await daemon.terminate()
    daemon = await coderd(api, requests_per_second=4, daily_quota=5)
    await publish_all(broker, requests(30, "b"))
    await daemon.wait_for_event("quota_exhausted", timeout=60)
    assert api.stats.v1_calls <= 5


async def test_a_message_that_keeps_crashing_its_consumer_is_dead_lettered(coderd, broker, api):
    daemon = await coderd(api)  # declares the queues
    assert await daemon.terminate() == 0
    await broker.publish(b'{"topic": "anzsco", "record": {"occp_text": "poison"}}', correlation_id="poison")
    # Stand in for a daemon that dies on this message: take it and drop the connection unacked.
    for _ in range(DELIVERY_LIMIT + 1):
        connection = await aio_pika.connect(AMQP_URL)
        queue = await (await connection.channel()).get_queue(broker.request_queue, ensure=False)
        received = asyncio.Event()

        async def take(message, received=received):
            received.set()  # and never ack

        await queue.consume(take)
        try:
            await asyncio.wait_for(received.wait(), 3)
        except asyncio.TimeoutError:
            break  # dead-lettered: nothing left to deliver
        finally:
            await connection.close()
    assert await broker.message_count(broker.request_queue) == 0
    connection = await aio_pika.connect(AMQP_URL)
    dead = await (await connection.channel()).get_queue(f"{broker.request_queue}.dead", ensure=False)
    message = await dead.get(timeout=5)
    await message.ack()
    await connection.close()
    assert message.correlation_id == "poison"
    assert message.headers["x-first-death-reason"] == "delivery_limit"
