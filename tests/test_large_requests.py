"""Large and compressed bodies, oversized replies, and outputs that belong to someone
else: in-process, with the emulator over loopback."""

from __future__ import annotations

import gzip
import json
import subprocess
import zlib

import pytest
from conftest import PUBLIC
from inprocess import running_core

from daemon.request import body as body_module
from daemon.request import finish


def records(n: int, prefix: str = "r") -> list[dict]:
    texts = ["registered nurse", "primary school teacher", "truck driver", "retired", "chef"]
    return [{"recordId": f"{prefix}{i}", "occp_text": texts[i % 5], "tasks_text": f"work {i % 7}"} for i in range(n)]


@pytest.fixture
def small_large_body(monkeypatch):
    """Bodies over 2 KB take the streaming path (the real threshold is 1 MiB)."""
    monkeypatch.setattr(body_module, "LARGE_BODY", 2048)


def without_ids(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in results]


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
async def test_a_large_or_compressed_body_gets_the_same_reply_as_a_small_one(
        make_emulator, tmp_path, small_large_body, encoding):
    api = await make_emulator()
    batch = records(400)
    raw = json.dumps({"topic": "anzsco", "records": batch}).encode()
    body = {None: raw, "gzip": gzip.compress(raw), "deflate": zlib.compress(raw)}[encoding]
    async with running_core(api.url, tmp_path) as core:
        streamed = core.reply(await core.deliver(body, content_encoding=encoding))
        body_module.LARGE_BODY = 1 << 30
        small = core.reply(await core.deliver(raw))
        assert not any((core.settings.state_dir / "spool").iterdir())  # the spool is cleaned up
    assert streamed == small
    assert [r["recordId"] for r in streamed["records"]] == [r["recordId"] for r in batch]


async def test_a_compressed_single_record_and_bad_bodies(make_emulator, tmp_path):
    api = await make_emulator()
    one = gzip.compress(json.dumps({"topic": "anzsco", "record": records(1)[0]}).encode())
    async with running_core(api.url, tmp_path) as core:
        single = core.reply(await core.deliver(one, content_encoding="gzip"))
        not_gzip = core.reply(await core.deliver(b'{"topic": "anzsco"}', content_encoding="gzip"))
        unknown = core.reply(await core.deliver(b'{"topic": "anzsco"}', content_encoding="br"))
        bomb = core.reply(await core.deliver(gzip.compress(b'{"topic": "' + b"a" * (3 << 20) + b'"}'),
                                             content_encoding="gzip"))
    assert single["record"]["recordId"] == "r0" and single["record"]["codeStatus"] == "successful"
    assert not_gzip["error"]["code"] == "invalid_message" and "decompress" in not_gzip["error"]["message"]
    assert unknown["error"]["code"] == "invalid_message" and "'br' is not supported" in unknown["error"]["message"]
    assert bomb["error"]["code"] == "invalid_message"  # a 3 MB topic name is no topic, but nothing breaks


async def test_an_oversized_reply_from_a_large_body_is_a_claim_check(make_emulator, tmp_path, small_large_body,
                                                                    monkeypatch):
    monkeypatch.setattr(finish, "MAX_REPLY_BYTES", 50_000)
    api = await make_emulator()
    batch = records(900)
    async with running_core(api.url, tmp_path) as core:
        message = await core.deliver({"topic": "anzsco", "records": batch}, correlation_id="large-1")
        reply = core.reply(message)
    assert reply["output"]["file"] == "replies/large-1.coded.jsonl" and reply["output"]["records"] == 900
    lines = (core.settings.outbox_dir / "replies/large-1.coded.jsonl").read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in lines] == [r["recordId"] for r in batch]


async def test_on_the_partner_tier_a_large_body_goes_to_batch_from_its_spool(make_emulator, tmp_path,
                                                                            small_large_body):
    api = await make_emulator()
    batch = records(400)
    async with running_core(api.url, tmp_path, tier="partner", batch_threshold=100) as core:
        message = await core.deliver({"topic": "anzsco", "records": batch})
        assert message.settled == ["ack"]  # journaled: the reply comes when the job is done
        for _ in range(300):
            if core.publisher.for_id(message.correlation_id):
                break
            await asyncio_sleep(0.05)
        reply = core.reply(message)
    assert reply["route"] == "batch" and [r["recordId"] for r in reply["records"]] == [r["recordId"] for r in batch]
    assert api.stats.operations_created == 1


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# --- outputs ----------------------------------------------------------------------------

def jsonl(path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records(n)))


async def test_an_output_of_another_request_is_never_replaced(make_emulator, tmp_path):
    api = await make_emulator(clients=PUBLIC)
    async with running_core(api.url, tmp_path) as core:
        jsonl(core.settings.inbox_dir / "a.jsonl", 3)
        request = {"topic": "anzsco", "inputFile": "a.jsonl", "outputFile": "out.jsonl"}
        await core.deliver(request, correlation_id="first")
        before = (core.settings.outbox_dir / "out.jsonl").read_bytes()
        other = core.reply(await core.deliver(request, correlation_id="second"))
        core.core.finisher.answered._recent.clear()  # as if its reply's confirmation had been lost
        await core.core.finisher.answered.stop()  # (and the log forgotten: only the output's owner knows)
        core.core.finisher.answered.db.path.unlink()
        await core.deliver(request, correlation_id="first")  # the same request, delivered again
        first, redelivered = core.publisher.for_id("first")
        nested = core.reply(await core.deliver({"topic": "anzsco", "inputFile": "a.jsonl",
                                                "outputFile": "x/y/z.jsonl"}, correlation_id="third"))
        calls = api.stats.coding_calls
    assert first["status"] == "completed" and redelivered["status"] == "completed"
    assert other["error"]["code"] == "output_exists" and "another outputFile" in other["error"]["message"]
    assert (core.settings.outbox_dir / "out.jsonl").read_bytes() == before
    assert nested["output"]["file"] == "x/y/z.jsonl" and (core.settings.outbox_dir / "x/y/z.jsonl").is_file()
    assert calls == 1  # the same three texts: coded once, then answered from the result cache


@pytest.fixture
def read_only_outbox(tmpfs):
    """The outbox as a read-only tmpfs (needs root to mount; skipped elsewhere)."""
    return tmpfs("outbox", "ro,size=1m")


async def test_a_read_only_outbox_fails_file_requests_before_any_call(make_emulator, tmp_path, read_only_outbox):
    api = await make_emulator(clients=PUBLIC)
    async with running_core(api.url, tmp_path) as core:
        jsonl(core.settings.inbox_dir / "a.jsonl", 3)
        reply = core.reply(await core.deliver({"topic": "anzsco", "inputFile": "a.jsonl"}))
    assert reply["status"] == "failed" and reply["error"]["code"] == "output_not_writable"
    assert api.stats.coding_calls == 0


async def test_a_batch_job_whose_outbox_turns_read_only_retries_then_fails_clearly(make_emulator, tmp_path,
                                                                                 monkeypatch, tmpfs):
    from daemon.backoff import Backoff
    from daemon.batch import runner

    monkeypatch.setattr(runner, "OUTPUT_PATIENCE", 1.0)
    monkeypatch.setattr(runner, "OUTPUT_BACKOFF", Backoff(base=0.1, cap=0.2))
    outbox = tmpfs("outbox", "size=1m")
    api = await make_emulator(processing_seconds=0.5)
    async with running_core(api.url, tmp_path, tier="partner") as core:
        jsonl(core.settings.inbox_dir / "a.jsonl", 5)
        message = await core.deliver({"topic": "anzsco", "inputFile": "a.jsonl"})
        assert message.settled == ["ack"]  # journaled
        subprocess.run(["mount", "-o", "remount,ro", str(outbox)], check=True)
        for _ in range(200):
            if core.publisher.for_id(message.correlation_id):
                break
            await asyncio_sleep(0.05)
        reply = core.reply(message)
    assert reply["status"] == "failed" and reply["error"]["code"] == "output_not_writable"
    assert api.stats.operations_created == 1
