"""`coderd run` end to end: real broker, emulator over loopback, one reply per request. The
rules behind each reply are tested in-process (test_core.py)."""

import uuid

import pytest
from conftest import quiet_config

from daemon.emulator import ThreadedEmulatorServer as EmulatorServer

GUIDE = {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}
ANZSCO_LATEST = "00000000-0000-0000-0000-000000000002"


@pytest.fixture
async def fast_emulator():
    async with EmulatorServer(quiet_config(requests_per_second=20)) as server:
        yield server


async def test_single_record_is_coded_and_correlated(coderd, broker, fast_emulator):
    await coderd(fast_emulator)
    await broker.publish({"topic": "anzsco", "record": {"recordId": "r1", **GUIDE}}, correlation_id="c-1")
    [(cid, reply)] = await broker.replies(1)
    assert cid == "c-1"
    assert reply["status"] == "completed" and reply["route"] == "sync" and reply["error"] is None
    assert reply["model"] == ANZSCO_LATEST and reply["topic"] == "anzsco"
    result = reply["record"]
    assert result["recordId"] == "r1" and result["codeStatus"] == "successful"
    assert result["result"][0]["codeCategory"] == "261313" and result["suggestions"] == []
    assert result["input"] == GUIDE


async def test_a_request_that_cannot_be_done_is_answered_and_acked(coderd, broker, fast_emulator):
    # Every failure path is covered in-process (test_core.py); this proves the broker's side.
    await coderd(fast_emulator)
    await broker.publish(b"this is not json", correlation_id="x")
    [(cid, reply)] = await broker.replies(1)
    assert cid == "x"
    assert reply["status"] == "failed" and reply["error"]["code"] == "invalid_message" and reply["error"]["message"]
    assert "records" not in reply and "record" not in reply
    assert await broker.message_count(broker.request_queue) == 0  # acked, not stuck


async def test_reply_addressing(coderd, broker, fast_emulator):
    await coderd(fast_emulator)
    await broker.publish({"topic": "anzsco", "record": GUIDE}, reply_to=None, correlation_id="to-default")
    [(cid, _)] = await broker.replies(1, queue=broker.default_reply_queue)
    assert cid == "to-default"
    await broker.publish({"topic": "anzsco", "record": GUIDE}, message_id="mid-7")
    [(cid, _)] = await broker.replies(1)
    assert cid == "mid-7"
    await broker.publish({"topic": "anzsco", "record": GUIDE})
    [(cid, _)] = await broker.replies(1)
    assert cid and len(cid) >= 16  # generated
    missing = f"no-such-queue-{uuid.uuid4().hex}"
    await broker.publish({"topic": "anzsco", "record": GUIDE}, reply_to=missing, correlation_id="lost")
    [(cid, reply)] = await broker.replies(1, queue=broker.default_reply_queue)
    assert cid == "lost" and reply["status"] == "completed"


async def test_a_deleted_default_reply_queue_is_declared_again_and_nothing_is_coded_twice(coderd, broker,
                                                                                        fast_emulator):
    daemon = await coderd(fast_emulator)
    channel = await broker.connection.channel()
    await channel.queue_delete(broker.default_reply_queue)
    missing = f"no-such-queue-{uuid.uuid4().hex}"
    await broker.publish({"topic": "anzsco", "record": GUIDE}, reply_to=missing, correlation_id="nowhere")
    await daemon.wait_for_event("request_done")
    [(cid, reply)] = await broker.replies(1, queue=broker.default_reply_queue)
    assert cid == "nowhere" and reply["status"] == "completed"
    assert fast_emulator.stats.coding_calls == 1
    assert await broker.message_count(broker.request_queue) == 0
    assert any(e.get("event") == "default_reply_queue_missing" for e in daemon.events())
