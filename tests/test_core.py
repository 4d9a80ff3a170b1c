"""The dispatcher and the workers in-process: every reply path, hand-backs, nacks, the
bisection of a refused call, retries, token and quota outages, shutdown with work in
flight. Fake messages and publisher; the emulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import PUBLIC
from inprocess import running_core

from daemon.backoff import Backoff
from daemon.emulator import Client
from daemon.realtime import calls as calls_module
from daemon.realtime import worker as worker_module

ONE = {"topic": "anzsco", "record": {"recordId": "r1", "occp_text": "software developer",
                                     "tasks_text": "writing code and unit tests"}}


def records(n: int, prefix: str = "r") -> list[dict]:
    return [{"recordId": f"{prefix}{i}", "occp_text": f"registered nurse {i}", "tasks_text": "caring"}
            for i in range(n)]


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(calls_module, "RETRY_BACKOFF", Backoff(base=0.01, cap=0.05))


async def test_a_record_is_coded_and_acked_after_its_reply(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver(ONE)
        reply = core.reply(message)
    assert message.settled == ["ack"]
    assert reply["status"] == "completed" and reply["route"] == "sync"
    assert reply["record"]["recordId"] == "r1" and reply["record"]["codeStatus"] == "successful"
    assert reply["record"]["result"][0]["codeCategory"] == "261313"


async def test_records_from_many_messages_share_calls(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path, requests_per_second=5.0) as core:
        await core.deliver({"topic": "anzsco", "records": records(1, "warm")})  # the idle slot goes at once
        messages = await asyncio.gather(*[core.deliver({"topic": "anzsco", "records": records(3, f"m{i}-")})
                                          for i in range(100)])
    assert all(m.settled == ["ack"] for m in messages)
    assert all(len(core.reply(m)["records"]) == 3 for m in messages)
    assert api.stats.coding_calls <= 4  # 301 records: two full calls and what arrived meanwhile


async def test_one_bad_record_never_sinks_the_call(make_emulator, tmp_path):
    api = await make_emulator()
    batch = [{"recordId": str(i), "occp_text": "registered nurse", "tasks_text": f"ward {i}"} for i in range(300)]
    batch[137] = {"recordId": "137", "occp_text": "x" * 80, "tasks_text": "y" * 30}
    async with running_core(api.url, tmp_path) as core:
        reply = core.reply(await core.deliver({"topic": "osca", "records": batch}))
    results = reply["records"]
    assert [r["recordId"] for r in results] == [str(i) for i in range(300)]
    assert results[137]["codeStatus"] == "invalid" and "at most 100" in results[137]["error"]
    assert all(r["codeStatus"] in ("successful", "unsuccessful") for i, r in enumerate(results) if i != 137)
    assert api.stats.records_per_call == [299]


async def test_text_is_cleaned_but_echoed_as_sent(make_emulator, tmp_path):
    api = await make_emulator()
    sent = {"occp_text": "Caf\u00e9  \u201chead\u201d chef", "tasks_text": "cooking\tmeals"}
    async with running_core(api.url, tmp_path) as core:
        reply = core.reply(await core.deliver({"topic": "osca", "record": sent}))
    assert reply["record"]["input"] == sent
    assert reply["record"]["codeStatus"] in ("successful", "unsuccessful")


async def test_requested_suggestions_and_model(make_emulator, tmp_path):
    api = await make_emulator()
    older = "00000000-0000-0000-0000-000000000003"
    async with running_core(api.url, tmp_path) as core:
        reply = core.reply(await core.deliver({"topic": "anzsco", "model": older, "numberOfSuggestions": 5,
                                               "record": {"occp_text": "qwzx vbnm"}}))
    assert reply["model"] == older
    assert reply["record"]["codeStatus"] == "unsuccessful" and 1 <= len(reply["record"]["suggestions"]) <= 5


@pytest.mark.parametrize("body, code", [
    (b"not json", "invalid_message"),
    ({"records": []}, "invalid_message"),
    ({"topic": "anzsco", "records": []}, "invalid_message"),
    ({"topic": "anzsco", "record": ONE["record"], "records": [ONE["record"]]}, "invalid_message"),
    ({"topic": "anzsco", "record": ONE["record"], "numberOfSuggestions": 20}, "invalid_message"),
    ({"topic": "nosuchtopic", "record": ONE["record"]}, "unknown_topic"),
    ({"topic": "anzsco", "model": "00000000-0000-0000-0000-00000000ffff", "record": ONE["record"]}, "unknown_model"),
    ({"topic": "anzsco", "model": "00000000-0000-0000-0000-000000000001", "record": ONE["record"]},
     "model_topic_mismatch"),
    ({"topic": "anzsco", "mode": "batch", "record": ONE["record"]}, "not_supported"),
    ({"topic": "anzsco", "inputFile": "../etc/passwd"}, "path_not_allowed"),
    ({"topic": "anzsco", "inputFile": "missing.jsonl"}, "input_not_found"),
])
async def test_requests_that_cannot_be_done_are_answered_failed(make_emulator, tmp_path, body, code):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver(body)
        reply = core.reply(message)
    assert message.settled == ["ack"]
    assert reply["status"] == "failed" and reply["error"]["code"] == code


async def test_an_input_file_is_coded_into_the_outbox(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        core.settings.inbox_dir.mkdir(parents=True)
        (core.settings.inbox_dir / "in.jsonl").write_text(
            "\n".join(json.dumps(r) for r in records(5)) + "\nnot json\n")
        message = await core.deliver({"topic": "anzsco", "inputFile": "in.jsonl"})
        reply = core.reply(message)
    assert reply["output"] == {"file": "in.coded.jsonl", "records": 6, "successful": reply["output"]["successful"],
                               "unsuccessful": reply["output"]["unsuccessful"], "invalid": 1, "cached": 0}
    lines = (core.settings.outbox_dir / "in.coded.jsonl").read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in lines[:5]] == [f"r{i}" for i in range(5)]


async def test_a_refused_call_is_bisected_until_the_bad_record_is_alone(make_emulator, tmp_path):
    api = await make_emulator()
    api.faults.reject_text = "POISON"
    batch = records(40)
    batch[17]["tasks_text"] = "POISON pill"
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver({"topic": "anzsco", "records": batch})
        reply = core.reply(message)
    statuses = [r["codeStatus"] for r in reply["records"]]
    assert statuses[17] == "invalid" and "refused by the coding API" in reply["records"][17]["error"]
    assert statuses.count("invalid") == 1
    assert api.stats.statuses["400"] <= 2 * 6  # a few halvings, never one call per record


async def test_retries_run_out_into_upstream_error_and_the_worker_carries_on(make_emulator, tmp_path, quick_retries):
    """The reproduction: an outage long enough for retries to run out, then a request with
    another key. It used to stop the worker for good (an empty group left in the backlog)."""
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        api.faults.error_rate = 1.0
        failed = await core.deliver({**ONE, "numberOfSuggestions": 2})
        api.faults.error_rate = 0.0
        later = await asyncio.wait_for(core.deliver(ONE), 10)
        other_key = await asyncio.wait_for(core.deliver({**ONE, "topic": "osca"}), 10)
        assert not core.supervisor.problems()
    assert core.reply(failed)["error"]["code"] == "upstream_error"
    assert "6 times" in core.reply(failed)["error"]["message"]
    assert core.reply(later)["status"] == core.reply(other_key)["status"] == "completed"
    assert len(core.core.worker.backlog) == 0


async def test_transient_failures_are_retried_to_success(make_emulator, tmp_path, quick_retries):
    api = await make_emulator()
    api.faults.force_429 = 3
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver({"topic": "anzsco", "records": records(10)})
    assert core.reply(message)["status"] == "completed"
    assert api.stats.statuses["429"] == 3


async def test_used_up_quota_hands_requests_back_to_the_queue(make_emulator, tmp_path):
    api = await make_emulator(daily_quota={"public": 2, "partner": 2}, clients=PUBLIC)
    async with running_core(api.url, tmp_path) as core:
        first = await core.deliver(ONE)  # the topic list and the latest model take the two calls
        second = await core.deliver(ONE)
        assert core.core.ledger.exhausted
    assert first.settled == second.settled == ["ack"]
    assert core.publisher.for_id(second.correlation_id) == [] and core.publisher.for_id(first.correlation_id) == []
    assert [m for _, m in core.publisher.returned] == [first, second]  # republished, then acked


async def test_a_reply_that_is_not_confirmed_leaves_the_message_to_the_broker(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        core.publisher.fail_publishes = 1
        message = await core.deliver(ONE)
    assert message.settled == ["nack"] and core.publisher.replies == []


async def test_a_bug_in_handling_nacks_so_the_delivery_limit_applies(make_emulator, tmp_path, monkeypatch):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        async def broken(incoming):
            raise KeyError("a bug")
        monkeypatch.setattr(core.core.dispatcher, "outcome", broken)
        message = await core.deliver(ONE)
    assert message.settled == ["nack"]


async def test_rejected_credentials_fail_waiting_requests(make_emulator, tmp_path):
    api = await make_emulator(clients={"client1": Client("another-secret", "public")})
    async with running_core(api.url, tmp_path) as core:
        message = await asyncio.wait_for(core.deliver(ONE), 10)
    reply = core.reply(message)
    assert reply["error"]["code"] == "upstream_error" and "credentials rejected" in reply["error"]["message"]


async def test_shutdown_hands_back_what_waits_and_drops_its_records(make_emulator, tmp_path):
    api = await make_emulator(requests_per_second=1.0)
    async with running_core(api.url, tmp_path, requests_per_second=1.0) as core:
        await core.deliver(ONE)
        waiting = [core.start({"topic": "anzsco", "records": records(300, f"w{i}-")}) for i in range(3)]
        await asyncio.sleep(0.1)
        for _, task in waiting:
            task.cancel()  # what the intake does to handlers still running after the grace period
        await asyncio.gather(*[t for _, t in waiting], return_exceptions=True)
        await asyncio.sleep(2.5)  # past the next slot: the worker took (and dropped) what was abandoned
        assert len(core.core.worker.backlog) == 0
    for message, _ in waiting:
        assert message.settled == ["ack"]  # acked after being republished
    assert len(core.publisher.returned) == 3
    assert api.stats.coding_calls == 1  # the abandoned requests' records were never coded


async def test_stopping_the_worker_hands_back_waiting_requests(make_emulator, tmp_path):
    api = await make_emulator(requests_per_second=1.0)
    async with running_core(api.url, tmp_path, requests_per_second=1.0) as core:
        await core.deliver(ONE)
        message, task = core.start({"topic": "anzsco", "records": records(300)})
        other, other_task = core.start({"topic": "osca", "records": records(5)})
        await asyncio.sleep(0.1)
        await core.core.worker.stop()
        await asyncio.gather(task, other_task)
    assert len(core.publisher.returned) + len(core.publisher.replies) == 3
    assert message.settled == other.settled == ["ack"]


async def test_a_crashing_worker_is_restarted_and_its_records_are_not_lost(make_emulator, tmp_path, monkeypatch):
    from daemon.ops import metrics

    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        worker = core.core.worker
        real_step, crashes = worker._step, []

        async def crashing_step():
            if len(crashes) < 2 and len(worker.backlog):
                taken = worker.backlog.take()
                worker._holding = taken  # it held records when it crashed
                crashes.append(taken)
                raise RuntimeError("injected")
            await real_step()

        monkeypatch.setattr(worker, "_step", crashing_step)
        before = metrics.task_crashes.labels("sync-worker")._value.get()
        message, task = core.start({"topic": "anzsco", "records": records(20)})
        while not crashes:
            await asyncio.sleep(0.01)
        problems = core.supervisor.problems()
        await asyncio.wait_for(task, 15)
    assert any("sync-worker is down" in p and "injected" in p for p in problems)
    assert metrics.task_crashes.labels("sync-worker")._value.get() - before == 2
    assert core.reply(message)["status"] == "completed"
    assert [r["codeStatus"] for r in core.reply(message)["records"]].count("invalid") == 0


async def test_a_wedged_worker_counts_as_down_and_is_restarted(make_emulator, tmp_path, monkeypatch):
    api = await make_emulator()
    async with running_core(api.url, tmp_path, wedged_after=0.4) as core:
        worker, hangs = core.core.worker, []
        real_step = worker._step

        async def hanging_step():
            if not hangs:
                hangs.append(1)
                await asyncio.Event().wait()  # never set: no progress
            await real_step()

        monkeypatch.setattr(worker, "_step", hanging_step)
        message, task = core.start(ONE)
        await asyncio.sleep(0.5)
        problems = core.supervisor.problems()
        await asyncio.wait_for(task, 10)
    assert any("no progress" in p or "TaskWedged" in p for p in problems), problems
    assert core.reply(message)["status"] == "completed"


async def test_unknown_topics_and_malformed_names_cost_at_most_the_topic_list(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        unknown = await asyncio.gather(*[core.deliver({"topic": f"topic{i}", "record": ONE["record"]})
                                         for i in range(40)])
        shapes = [await core.deliver({"topic": topic, "model": model, "record": ONE["record"]})
                  for topic, model in [("..", None), (".", None), ("a/b", None), ("anzsco", ".."),
                                       ("anzsco", "../../topics"), ("anzsco", "not-a-guid")]]
    assert {core.reply(m)["error"]["code"] for m in unknown} == {"unknown_topic"}
    assert "its topics: anzsco, anzsic, osca" in core.reply(unknown[0])["error"]["message"]
    assert [core.reply(m)["error"]["code"] for m in shapes] == ["unknown_topic"] * 3 + ["unknown_model"] * 3
    assert api.stats.v1_calls == 1  # the topic list, once


def test_a_path_segment_can_never_be_dot_or_dot_dot():
    from hypothesis import given
    from hypothesis import strategies as st

    from daemon.api.catalog import segment

    @given(st.text())
    def check(value):
        try:
            encoded = segment(value)
        except ValueError:
            assert value in (".", "..")
            return
        assert "/" not in encoded and encoded not in (".", "..") and "?" not in encoded and "#" not in encoded

    check()


async def test_a_reply_too_large_to_publish_is_delivered_as_a_claim_check_file(make_emulator, tmp_path, monkeypatch):
    from daemon.request import finish

    monkeypatch.setattr(finish, "MAX_REPLY_BYTES", 200_000)
    monkeypatch.setattr(finish, "ENCODE_IN_THREAD", 100)
    api = await make_emulator()
    batch = records(1200)
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver({"topic": "anzsco", "numberOfSuggestions": 16, "records": batch},
                                     correlation_id="big/one")
        small = await core.deliver({"topic": "anzsco", "records": batch[:150]})
    reply = core.reply(message)
    assert "records" not in reply and reply["status"] == "completed"
    output = reply["output"]
    assert output["file"].startswith("replies/") and output["records"] == 1200
    assert output["successful"] + output["unsuccessful"] + output["invalid"] == 1200
    lines = (core.settings.outbox_dir / output["file"]).read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in lines] == [r["recordId"] for r in batch]
    assert len(core.reply(small)["records"]) == 150  # under the limit: inline, as always
    assert api.stats.records_coded == 1200 + 150  # coded once: never a call spent on what cannot be answered


@pytest.mark.parametrize("body", [
    b'{"topic":"anzsco","record":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    b'{"topic":"anzsco","record":{"recordId":NaN,"occp_text":"chef"}}',
    b'{"topic":"anzsco","record":{"recordId":-Infinity,"occp_text":"chef"}}',
    b'{"topic":"anzsco","record":{"occp_text":"chef"},"numberOfSuggestions":Infinity}',
    json.dumps({"topic": "anzsco", "inputFile": ""}).encode(),
    json.dumps({"topic": "anzsco", "inputFile": "."}).encode(),
    json.dumps({"topic": "anzsco", "inputFile": "/"}).encode(),
    json.dumps({"topic": "anzsco", "inputFile": "in.jsonl", "outputFile": "a\nb.jsonl"}).encode(),
])
async def test_malformed_bodies_get_one_invalid_message_reply(make_emulator, tmp_path, body):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver(body)
    assert message.settled == ["ack"]
    assert core.reply(message)["error"]["code"] == "invalid_message"
    assert api.stats.v1_calls == 0


async def test_a_record_whose_record_id_is_not_a_string_is_invalid_alone(make_emulator, tmp_path):
    api = await make_emulator()
    batch = [{"recordId": [1, 2], "occp_text": "chef"}, {"recordId": 7, "occp_text": "chef"},
             {"recordId": "ok", "occp_text": "chef"}]
    async with running_core(api.url, tmp_path) as core:
        reply = core.reply(await core.deliver({"topic": "anzsco", "records": batch}))
    assert [(r["recordId"], r["codeStatus"]) for r in reply["records"]] == [
        (None, "invalid"), (None, "invalid"), ("ok", "successful")]
    assert "recordId must be a string" in reply["records"][0]["error"]


async def test_a_request_delivered_again_after_its_reply_is_acked_not_coded(make_emulator, tmp_path):
    """The broker delivers a request again when the connection was cut after its reply was
    confirmed but before its ack: it is not coded or answered again, even after a restart."""
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        first = await core.deliver(ONE, correlation_id="once")
        again = await core.deliver(ONE, correlation_id="once")
        other_body = await core.deliver({**ONE, "numberOfSuggestions": 1}, correlation_id="once")
    async with running_core(api.url, tmp_path) as restarted:
        after_restart = await restarted.deliver(ONE, correlation_id="once")
    assert first.settled == again.settled == after_restart.settled == ["ack"]
    assert len(core.publisher.for_id("once")) == 2  # the first, and the request with another body
    assert restarted.publisher.replies == []
    assert api.stats.coding_calls == 2 and other_body.settled == ["ack"]


async def test_a_batch_request_delivered_again_joins_its_journaled_job(make_emulator, tmp_path):
    api = await make_emulator(processing_seconds=0.5)
    batch = {"topic": "anzsco", "mode": "batch", "records": records(20)}
    async with running_core(api.url, tmp_path, tier="partner") as core:
        first = await core.deliver(batch, correlation_id="job-1")
        again = await core.deliver(batch, correlation_id="job-1")  # the ack was lost to a cut
        for _ in range(200):
            if core.publisher.for_id("job-1"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert first.settled == again.settled == ["ack"]
    assert len(core.publisher.for_id("job-1")) == 1 and api.stats.operations_created == 1


async def test_in_a_token_outage_every_request_waits_the_same_patience_then_fails(make_emulator, tmp_path,
                                                                                  monkeypatch):
    from daemon.api import token as token_module

    monkeypatch.setattr(worker_module, "TOKEN_PATIENCE", 1.5)
    monkeypatch.setattr(worker_module, "TOKEN_RECHECK", 0.1)
    monkeypatch.setattr(token_module, "TRANSIENT_BACKOFF", Backoff(base=0.2, cap=0.4, jitter=False))
    api = await make_emulator()
    api.faults.token_outage = True
    async with running_core(api.url, tmp_path) as core:
        early = core.start(ONE)
        await asyncio.sleep(0.7)
        late = core.start(ONE)
        await asyncio.wait_for(early[1], 10)
        late_still_waiting = not late[1].done()  # its own patience runs from its own arrival
        await asyncio.wait_for(late[1], 10)
        api.faults.token_outage = False
        recovered = await asyncio.wait_for(core.deliver(ONE), 10)
    for message, _ in (early, late):
        reply = core.reply(message)
        assert reply["error"]["code"] == "upstream_error" and "within 2 s" in reply["error"]["message"]
    assert late_still_waiting
    assert core.reply(recovered)["status"] == "completed"


async def test_a_backlog_left_holding_only_finished_requests_is_no_crash(make_emulator, tmp_path):
    """Records whose requests ended (a cut cancels their handlers) are dropped when the
    worker looks for the next call; if nothing else waits there is no call, and no crash."""
    from daemon.realtime.backlog import CallKey
    from daemon.realtime.job import SyncJob, pending_records
    from daemon.request.cleaning import clean_records

    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        worker = core.core.worker
        worker._wake.clear()
        raw = records(3, "gone")
        job = SyncJob(raw, None)
        cleaned, problems = clean_records(raw)
        worker.backlog.add(CallKey("anzsco", None, 3), pending_records(job, cleaned, problems, batch_available=False))
        job.abandon()  # its message went back to the broker
        worker._wake.set()
        await asyncio.sleep(0.2)
        reply = core.reply(await core.deliver(ONE))
        crashes = core.supervisor.snapshot()["sync-worker"]["crashes_recent"]
    assert reply["status"] == "completed" and api.stats.records_coded == 1
    assert crashes == 0
