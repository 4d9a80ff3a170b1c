"""Call economy in-process: each distinct text goes to the API once per call, the result
cache answers repeats (across requests, restarts and the batch route) exactly as the API
did, only 200 answers are remembered, and quota pacing makes a trickle share calls."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from inprocess import running_core

from daemon.api.cache import CacheKey, ResultCache
from daemon.api.pacer import DAY

TEXTS = [("registered nurse", "caring for patients"), ("teacher", "teaching children"), ("retired", ""),
         ("software developer", "writing code"), ("chef", "cooking meals"), ("truck driver", "driving trucks")]


def repeated(n: int, prefix: str, texts=TEXTS) -> list[dict]:
    return [{"recordId": f"{prefix}{i}", "occp_text": texts[i % len(texts)][0], "tasks_text": texts[i % len(texts)][1]}
            for i in range(n)]


def without_id(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "recordId"}


async def settle_cache(core) -> None:
    """Wait until the cache has written what it was given (it writes in batches)."""
    cache = core.core.worker.cache
    while cache._pending:
        await asyncio.sleep(0.05)
    await cache._flush()


async def test_each_distinct_text_goes_to_the_api_once_and_every_record_gets_its_own_result(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        reply = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(360, "r", TEXTS * 5)}))
    assert api.stats.records_coded == len(TEXTS)
    results = reply["records"]
    assert [r["recordId"] for r in results] == [f"r{i}" for i in range(360)]
    for i, result in enumerate(results):  # the same answer for the same text, each echoing its own input
        assert result["input"] == {"occp_text": TEXTS[i % 6][0], "tasks_text": TEXTS[i % 6][1]}
        assert without_id(result) == without_id(results[i % 6])


async def test_repeats_across_requests_and_restarts_cost_nothing_and_answer_the_same(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        first = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(6, "a")}))["records"]
        await settle_cache(core)
        calls = api.stats.coding_calls
        second = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(6, "b")}))["records"]
        assert api.stats.coding_calls == calls
    async with running_core(api.url, tmp_path) as core:  # a restart on the same state_dir
        third = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(6, "c")}))["records"]
        assert core.core.worker.cache.hits == 6
    assert api.stats.coding_calls == calls and api.stats.records_coded == 6
    assert [without_id(r) for r in second] == [without_id(r) for r in third] == [without_id(r) for r in first]
    assert [r["recordId"] for r in third] == [f"c{i}" for i in range(6)]


async def test_another_model_or_suggestions_count_is_not_served_from_the_cache(make_emulator, tmp_path):
    api = await make_emulator()
    older = "00000000-0000-0000-0000-000000000003"  # anzsco's older model; the latest is ...0002
    async with running_core(api.url, tmp_path) as core:
        await core.deliver({"topic": "anzsco", "records": repeated(3, "a")})
        await settle_cache(core)
        coded = api.stats.records_coded
        reply = core.reply(await core.deliver({"topic": "anzsco", "model": older, "records": repeated(3, "b")}))
        assert api.stats.records_coded == coded + 3 and reply["model"] == older
        await core.deliver({"topic": "anzsco", "numberOfSuggestions": 5, "records": repeated(3, "c")})
        assert api.stats.records_coded == coded + 6


async def test_only_answers_the_api_gave_are_cached(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path) as core:
        api.faults.reject_text = "teacher"  # the API refuses any call with this text (400)
        reply = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(2, "a")}))
        assert [r["codeStatus"] for r in reply["records"]] == ["successful", "invalid"]
        await settle_cache(core)
        api.faults.reject_text = None
        coded = api.stats.records_coded
        reply = core.reply(await core.deliver({"topic": "anzsco", "records": repeated(2, "b")}))
        assert [r["codeStatus"] for r in reply["records"]] == ["successful", "successful"]
        assert api.stats.records_coded == coded + 1  # the nurse came from the cache, the teacher from the API


async def test_with_the_cache_off_every_request_is_coded(make_emulator, tmp_path):
    api = await make_emulator()
    async with running_core(api.url, tmp_path, cache=False) as core:
        for prefix in "ab":
            await core.deliver({"topic": "anzsco", "records": repeated(6, prefix)})
    assert api.stats.records_coded == 12
    assert not (tmp_path / "state" / "cache.sqlite").exists()


async def test_the_batch_route_uploads_only_what_the_cache_does_not_know(make_emulator, tmp_path):
    api = await make_emulator(processing_seconds=0.3)
    known = repeated(6, "s")
    fresh = [{"recordId": f"n{i}", "occp_text": f"baker {i}", "tasks_text": "baking bread"} for i in range(4)]
    async with running_core(api.url, tmp_path, tier="partner") as core:
        coded = {r["input"]["occp_text"]: without_id(r)
                 for r in core.reply(await core.deliver({"topic": "anzsco", "records": known}))["records"]}
        await settle_cache(core)
        reply = await core.later_reply(await core.deliver({"topic": "anzsco", "mode": "batch",
                                                           "records": repeated(6, "b")}))
        assert reply["route"] == "batch" and api.stats.operations_created == 0  # nothing left to upload
        assert [without_id(r) for r in reply["records"]] == [coded[t] for t, _ in TEXTS]
        core.settings.inbox_dir.mkdir(parents=True)
        mixed = [fresh[0], *repeated(3, "x"), *fresh[1:], *repeated(6, "y")[3:]]
        (core.settings.inbox_dir / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in mixed) + "\n")
        reply = await core.later_reply(await core.deliver({"topic": "anzsco", "mode": "batch",
                                                           "inputFile": "mixed.jsonl"}))
    assert reply["route"] == "batch" and api.stats.operations_created == 1
    assert reply["output"]["records"] == 10 and reply["output"]["cached"] == 6
    lines = [json.loads(line) for line in (core.settings.outbox_dir / "mixed.coded.jsonl").read_text().splitlines()]
    assert [r["recordId"] for r in lines] == [r["recordId"] for r in mixed]
    for line, record in zip(lines, mixed):
        if record["occp_text"] in coded:
            assert without_id(line) == coded[record["occp_text"]]
        else:
            assert line["codeStatus"] in ("successful", "unsuccessful") and line["input"]["occp_text"].startswith("baker")


async def test_a_trickle_shares_calls_once_the_burst_is_spent(make_emulator, tmp_path):
    """A quota whose even pace is one call every ~3 s, a burst of two calls: of twelve
    single-record requests 0.5 s apart, the first go at once, the rest ride along in
    paced calls, and every one is answered."""
    left = DAY - time.time() % DAY
    if left < 300:
        pytest.skip("too close to 00:00 UTC: the day's budget resets before the test ends")
    quota = int(left / 3)
    api = await make_emulator(daily_quota={"public": quota, "partner": quota})
    async with running_core(api.url, tmp_path, daily_quota=quota, quota_burst=2.5 / quota, cache=False) as core:
        began = time.monotonic()
        messages = []
        for i in range(12):
            body = {"topic": "anzsco", "record": {"recordId": f"t{i}", "occp_text": f"welder {i}", "tasks_text": ""}}
            messages.append(asyncio.create_task(core.deliver(body)))
            await asyncio.sleep(0.5)
        messages = await asyncio.gather(*messages)
        elapsed = time.monotonic() - began
        pace = core.core.worker.pacer.pace()
        used = core.core.ledger.used
    assert all(core.reply(m)["status"] == "completed" for m in messages)
    assert api.stats.coding_calls < 12
    assert used <= 2.5 + pace * elapsed + 2  # the burst, the even pace, and the topic look-up


async def test_the_cache_keeps_its_bound_least_recently_used_first(tmp_path):
    now = [1_000_000.0]
    cache = ResultCache(tmp_path, max_entries=5, ttl_days=1, clock=lambda: now[0])
    await cache.start()
    keys = [CacheKey("anzsco", "m", f"text {i}", "", 3) for i in range(8)]
    for key in keys[:5]:
        cache.store(key, {"codeStatus": "successful", "result": [{"code": key.occp_text}]})
    await cache._flush()
    now[0] += 4000  # past TOUCH_AFTER: a hit refreshes its entry's last use
    assert set(await cache.lookup(keys[:2])) == set(keys[:2])
    for key in keys[5:]:
        now[0] += 1
        cache.store(key, {"codeStatus": "successful", "result": []})
    await cache._flush()
    assert cache.size == 5
    assert set(await cache.lookup(keys)) == {*keys[:2], *keys[5:]}  # the three least recently used went
    now[0] += 86400 + 10  # past the TTL: nothing is served
    assert await cache.lookup(keys) == {}
    await cache.stop()
