"""`coderd run` end to end: real broker, emulator over loopback, one reply per request."""

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


async def test_one_bad_record_never_sinks_the_call(coderd, broker, fast_emulator):
    daemon = await coderd(fast_emulator)
    records = [{"recordId": str(i), "occp_text": "registered nurse", "tasks_text": f"ward {i}"} for i in range(300)]
    records[137] = {"recordId": "137", "occp_text": "x" * 80, "tasks_text": "y" * 30}
    await broker.publish({"topic": "osca", "records": records}, correlation_id="big")
    [(_, reply)] = await broker.replies(1)
    results = reply["records"]
    assert [r["recordId"] for r in results] == [str(i) for i in range(300)]
    assert results[137]["codeStatus"] == "invalid" and "at most 100" in results[137]["error"]
    assert all(r["codeStatus"] in ("successful", "unsuccessful") for i, r in enumerate(results) if i != 137)
    assert fast_emulator.stats.records_per_call == [299]
    await daemon.wait_for_event("request_done")  # logged just after the ack
    done = [e for e in daemon.events() if e.get("event") == "request_done"]
    assert done[0]["correlation_id"] == "big" and done[0]["records"] == 300 and done[0]["route"] == "sync"


async def test_text_is_cleaned_but_echoed_as_sent(coderd, broker, fast_emulator):
    await coderd(fast_emulator)
    sent = {"occp_text": "Café  “head” chef", "tasks_text": "cooking\tmeals"}
    await broker.publish({"topic": "osca", "record": sent})
    [(_, reply)] = await broker.replies(1)
    assert reply["record"]["input"] == sent
    assert reply["record"]["codeStatus"] in ("successful", "unsuccessful")


@pytest.mark.parametrize("body, code", [
    (b"this is not json", "invalid_message"),
    ({"records": [GUIDE]}, "invalid_message"),
    ({"topic": "anzsco", "records": []}, "invalid_message"),
    ({"topic": "anzsco", "record": GUIDE, "records": [GUIDE]}, "invalid_message"),
    ({"topic": "anzsco", "record": GUIDE, "numberOfSuggestions": 20}, "invalid_message"),
    ({"topic": "nosuchtopic", "record": GUIDE}, "unknown_topic"),
    ({"topic": "anzsco", "model": "99999999-0000-0000-0000-000000000000", "record": GUIDE}, "unknown_model"),
    ({"topic": "anzsco", "model": "00000000-0000-0000-0000-000000000001", "record": GUIDE}, "model_topic_mismatch"),
    ({"topic": "anzsco", "mode": "batch", "record": GUIDE}, "not_supported"),
])
async def test_requests_that_cannot_be_done_fail_clearly(coderd, broker, fast_emulator, body, code):
    await coderd(fast_emulator)
    await broker.publish(body, correlation_id="x")
    [(cid, reply)] = await broker.replies(1)
    assert cid == "x"
    assert reply["status"] == "failed" and reply["error"]["code"] == code and reply["error"]["message"]
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


async def test_requested_suggestions_and_model(coderd, broker, fast_emulator):
    await coderd(fast_emulator)
    older = "00000000-0000-0000-0000-000000000003"
    await broker.publish({"topic": "anzsco", "model": older, "numberOfSuggestions": 5,
                          "record": {"occp_text": "qwzx vbnm"}})
    [(_, reply)] = await broker.replies(1)
    assert reply["model"] == older
    assert reply["record"]["codeStatus"] == "unsuccessful" and 1 <= len(reply["record"]["suggestions"]) <= 5
