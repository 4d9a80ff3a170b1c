"""The lease and the state stream on the real broker, in-process: one holder at a time,
handed on when the holder's connection goes; entries written by one replica read back
by another and brought into its own state_dir."""

import asyncio
import json
import time

import pytest
from harness import unique_prefix
from proxy import TcpProxy

from daemon.api.quota import QuotaLedger, utc_day
from daemon.batch.journal import Job, Journal, Part
from daemon.broker.connection import BrokerLink
from daemon.broker.lease import Lease
from daemon.broker.statestream import StateStream
from daemon.config import Settings
from daemon.ops.supervisor import Supervisor
from daemon.replica.adopt import adopt, read_view
from daemon.replica.sharing import NoSharing, StreamSharing


@pytest.fixture
def prefix():
    return unique_prefix()


def settings(prefix: str, amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/") -> Settings:
    return Settings(amqp_url=amqp_url, request_queue=f"{prefix}.requests", default_reply_queue=f"{prefix}.replies")


@pytest.fixture
async def links(prefix):
    opened: list[BrokerLink] = []

    async def open_link(amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/") -> BrokerLink:
        link = BrokerLink(settings(prefix, amqp_url))
        await link.start()
        opened.append(link)
        return link

    yield open_link
    live = [link for link in opened if link.connected]
    if live:
        channel = await live[0].connection.channel()
        for suffix in ("", ".dead", ".interactive", ".interactive.dead", ".lease", ".state"):
            await channel.queue_delete(f"{prefix}.requests{suffix}")
        await channel.queue_delete(f"{prefix}.replies")
        await channel.close()
    for link in opened:
        await link.stop()


async def held_by(leases: list[Lease], timeout: float = 15) -> Lease:
    """The one lease holder, once there is exactly one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(lease.holding for lease in leases) != 1:
        assert asyncio.get_running_loop().time() < deadline, [lease.holding for lease in leases]
        await asyncio.sleep(0.02)
    return next(lease for lease in leases if lease.holding)


async def test_one_replica_holds_the_lease_and_it_passes_on_when_its_connection_goes(links, prefix):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    try:
        first = Lease(await links(f"amqp://guest:guest@127.0.0.1:{proxy.port}/"), f"{prefix}.requests",
                      Supervisor())
        await first.start()
        assert (await held_by([first])) is first
        others = [Lease(await links(), f"{prefix}.requests", Supervisor()) for _ in range(2)]
        for lease in others:
            await lease.start()
        await asyncio.sleep(0.5)
        assert (await held_by([first, *others])) is first  # the others wait

        proxy.cut()  # the holder's connection goes: it stops acting at once, another one takes over
        successor = await held_by(others)
        assert first.lost.is_set() and not first.holding
        await asyncio.sleep(1)  # the first one reconnects, and waits its turn
        assert await held_by([first, *others]) is successor
        for lease in (first, *others):
            await lease.stop()
    finally:
        await proxy.stop()


async def test_the_lease_is_renewed_before_the_consumer_timeout_and_never_multiplied(links, prefix):
    link = await links()
    leases = [Lease(link, f"{prefix}.requests", Supervisor(), renew_every=0.2),
              Lease(await links(), f"{prefix}.requests", Supervisor())]
    for lease in leases:  # two replicas starting together may each publish a lease
        await lease.start()
    holder = await held_by(leases)
    message = holder._message
    await asyncio.sleep(1.5)  # several renewals
    assert holder.holding and holder._message is not None and holder._message is not message
    assert await link.queue_depth(holder.name) == 0  # one lease, held; an extra one was used up
    assert sum(lease.holding for lease in leases) == 1
    await holder.stop()
    assert (await held_by(leases)) is not holder  # stopping hands it to the next replica
    for lease in leases:
        await lease.stop()


@pytest.fixture
async def supervisor():
    async with Supervisor() as running:
        yield running


async def test_a_replica_on_another_host_takes_over_the_state_written_by_the_active_one(links, prefix, tmp_path,
                                                                                        supervisor):
    writer_stream = StateStream(await links(), f"{prefix}.requests")
    await writer_stream.start()
    sharing = StreamSharing(writer_stream, supervisor)
    await sharing.start()
    active_journal = Journal(tmp_path / "host-a")
    running = Job.new(correlation_id="c1", reply_to="r", topic="anzsco", model=None, kind="records", identity="j1")
    active_journal.create(running, [{"occp_text": "chef", "recordId": i} for i in range(30000)])
    await sharing.job_created(running, active_journal.directory(running))
    running.parts = [Part("spool-000.jsonl", 5000, 1234, operation_id="op-1", upload_url="https://u")]
    running.phase = "polling"
    active_journal.save(running)
    await sharing.job(running)
    done = Job.new(correlation_id="c2", reply_to="r", topic="anzsco", model=None, kind="file", identity="j2",
                   input_file="in.jsonl")
    await sharing.job_created(done, active_journal.directory(done))
    await sharing.job_done(done)
    today = utc_day(time.time())
    sharing.quota(today, 41)
    sharing.quota(today, 42)  # written behind, coalesced
    await asyncio.sleep(0.5)

    reader = StateStream(await links(), f"{prefix}.requests")
    await reader.start()
    standby_journal = Journal(tmp_path / "host-b")
    stale = Job.new(correlation_id="c2", reply_to="r", topic="anzsco", model=None, kind="file", identity="j2")
    standby_journal.create(stale)  # this host ran it once; another host delivered it since
    ledger = QuotaLedger(tmp_path / "host-b", 1000)
    view = await read_view(reader)
    assert await adopt(view, reader, standby_journal, ledger, NoSharing()) == 1

    [taken] = standby_journal.jobs()  # the delivered one is gone from this host too
    assert taken.job_id == "j1" and taken.phase == "polling" and taken.parts[0].operation_id == "op-1"
    assert taken.revision == running.revision
    request = (standby_journal.directory(taken) / "request.jsonl").read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in request] == list(range(30000))  # more than one chunk
    assert ledger.used == 42
    for stream in (writer_stream, reader):
        await stream.stop()
    await sharing.stop()


async def test_entries_appended_while_reading_back_do_not_cost_the_connection(links, prefix):
    """A stream answers basic.reject by closing the connection: reading back must never
    leave deliveries to be rejected, even when entries keep coming after its marker."""
    writer = StateStream(await links(), f"{prefix}.requests")
    reader_link = await links()
    reader = StateStream(reader_link, f"{prefix}.requests")
    for stream in (writer, reader):
        await stream.start()
    for day in range(500):
        await writer.append("quota", json.dumps({"day": str(day), "used": day}).encode())

    async def keep_appending():
        for used in range(10_000):
            await writer.append("quota", json.dumps({"day": "later", "used": used}).encode())

    appending = asyncio.ensure_future(keep_appending())
    try:
        for _ in range(3):
            seen = []
            await reader.read(lambda kind, headers, body, offset: seen.append(json.loads(body)["day"]))
            assert seen[:500] == [str(day) for day in range(500)]
        await asyncio.sleep(1)  # a connection closed by the broker would be noticed by now
        assert reader_link.connected and reader_link.reconnects == 0
    finally:
        appending.cancel()
        await asyncio.gather(appending, return_exceptions=True)
        for stream in (writer, reader):
            await stream.stop()
