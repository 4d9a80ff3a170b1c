"""Payloads through the real broker: a gzip body, and a reply too large to publish, which
is delivered as a claim-check file in the outbox."""

from __future__ import annotations

import gzip
import json

from conftest import quiet_config

from daemon.emulator import ThreadedEmulatorServer as EmulatorServer


def records(n: int) -> list[dict]:
    jobs = ["registered nurse", "primary school teacher", "truck driver", "software developer", "chef"]
    return [{"recordId": f"r{i}", "occp_text": jobs[i % 5], "tasks_text": f"shift {i}"} for i in range(n)]


async def test_a_gzip_body_is_coded(coderd, broker):
    async with EmulatorServer(quiet_config(requests_per_second=20)) as api:
        await coderd(api, requests_per_second=20)
        body = gzip.compress(json.dumps({"topic": "anzsco", "records": records(50)}).encode())
        await broker.publish(body, correlation_id="gz", content_encoding="gzip")
        [(cid, reply)] = await broker.replies(1)
    assert cid == "gz" and reply["status"] == "completed"
    assert [r["recordId"] for r in reply["records"]] == [f"r{i}" for i in range(50)]


async def test_a_reply_over_16_mib_arrives_as_a_claim_check_file(coderd, broker, tmp_path):
    # 13,000 records with 16 suggestions each: a reply of about 20 MB, from a 1.2 MB body.
    async with EmulatorServer(quiet_config(requests_per_second=50)) as api:
        daemon = await coderd(api, requests_per_second=50, daily_quota=100000)
        batch = records(13000)
        await broker.publish({"topic": "anzsco", "numberOfSuggestions": 16, "records": batch},
                             correlation_id="huge")
        [(cid, reply)] = await broker.replies(1, timeout=120)
    assert cid == "huge" and reply["status"] == "completed" and "records" not in reply
    assert reply["output"]["file"] == "replies/huge.coded.jsonl" and reply["output"]["records"] == 13000
    lines = (tmp_path / "state" / "outbox" / reply["output"]["file"]).read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in lines] == [r["recordId"] for r in batch]
    assert api.stats.records_coded == 13000  # coded once
    assert any(e.get("event") == "reply_claim_checked" for e in daemon.events())
