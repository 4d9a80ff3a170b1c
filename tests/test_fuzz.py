"""The message edge under fuzz: at least 10,000 generated bodies (valid, near-valid and
garbage) through the in-process dispatcher. Every one is settled once and answered once
with a reply that is strict JSON and fits the reply schema; nothing raises out of the
handler; nothing that reaches the API breaks its rules on a body (no 400)."""

from __future__ import annotations

import asyncio
import json

from conftest import quiet_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import BackgroundCore, FakeMessage

from daemon.broker.delivery import process
from daemon.request.messages import Reply

BATCH, EXAMPLES = 50, 200  # bodies per example, examples: 10,000 bodies

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=12)
texts = st.sampled_from(["software developer", "registered nurse", "teacher", "", "  ", "caf\u00e9 owner",
                         "x" * 150, "chef\u2013cook", "\u0000\u0007bell"]) | st.text(max_size=40)
good_record = st.fixed_dictionaries({"occp_text": texts, "tasks_text": texts},
                                    optional={"recordId": st.text(max_size=8)})
record = good_record | st.fixed_dictionaries({}, optional={
    "recordId": any_json, "occp_text": any_json | texts, "tasks_text": any_json | texts}) | any_json
topic = st.sampled_from(["anzsco", "anzsco", "osca"]) | st.sampled_from(
    ["anzsic", "nosuchtopic", "", " ", "../v1", "a/b", "%2e%2e", "\u00e9", "topics"]) | any_json
request = st.fixed_dictionaries({"topic": topic}, optional={
    "record": record,
    "records": st.lists(record, max_size=6) | st.just([]) | any_json,
    "inputFile": st.sampled_from(["", ".", "/", "missing.jsonl", "../x", "a\nb", "sub/"]) | any_json,
    "outputFile": st.text(max_size=10) | any_json,
    "numberOfSuggestions": st.sampled_from([3, 3, 0, 16, 17, -1, True, 2.0, "3", None]),
    "mode": st.sampled_from(["auto", "sync", "batch", "other", None]) | any_json,
    "model": st.sampled_from(["00000000-0000-0000-0000-000000000002", "..", "", "x" * 300]) | any_json,
})
DEEP = b'{"topic":"anzsco","record":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
HUGE = json.dumps({"topic": "anzsco", "records": [{"occp_text": "teacher", "tasks_text": "teaching"}] * 350}).encode()
bodies = (request.map(lambda b: json.dumps(b).encode())
          | any_json.map(lambda b: json.dumps(b).encode())
          | st.binary(max_size=40)
          | st.sampled_from([DEEP, HUGE, b"", b"null", b"[]", b'"text"', b"\xff\xfe{}", b'{"topic":"anzsco","record":NaN}',
                             b'{"topic":"anzsco","record":{"recordId":NaN,"occp_text":"chef"}}']))


async def deliver_all(harness, batch: list[bytes]) -> list[FakeMessage]:
    messages = [FakeMessage(body) for body in batch]
    await asyncio.gather(*[process(m, lane="bulk", queue=harness.settings.request_queue,
                                   dispatch=harness.core.dispatcher.handle, requeuer=harness.publisher)
                           for m in messages])
    return messages


def test_ten_thousand_generated_bodies_each_get_exactly_one_valid_reply(tmp_path, quiet_logs):
    seen = []
    emulator = quiet_config(daily_quota={"public": 10**6, "partner": 10**6})
    with BackgroundCore(tmp_path, emulator, daily_quota=10**6, cache=False) as background:  # every record a call
        harness = background.harness
        harness.core.limiter.interval = 0.002  # pacing is not what is fuzzed here: the limiter has its own tests

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(bodies, min_size=BATCH, max_size=BATCH))
        def check(batch):
            harness.publisher.replies.clear()
            messages = background.run(deliver_all(harness, batch))
            by_id = {}
            for published in harness.publisher.replies:
                by_id.setdefault(published.correlation_id, []).append(published)
            for message in messages:
                assert message.settled == ["ack"], (message.body[:200], message.settled)
                replies = by_id.get(message.correlation_id, [])
                assert len(replies) == 1, (message.body[:200], len(replies))
                Reply.model_validate_json(replies[0].raw, strict=True)  # the model the schema is made from
            seen.extend(batch)

        check()
        statuses = dict(background.emulator.stats.statuses)
    assert len(seen) >= BATCH * EXAMPLES
    assert "400" not in statuses and statuses.get("200", 0) > 100, statuses
