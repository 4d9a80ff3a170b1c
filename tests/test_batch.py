"""The batch route end to end: routing, claim-check files, and a crash-safe batch manager."""

import asyncio
import csv
import json
import subprocess
import sys

import pytest
from conftest import quiet_config
from harness import ROOT

from daemon.emulator import ThreadedEmulatorServer as EmulatorServer

PARTNER = dict(tier="partner", requests_per_second=10, batch_poll_seconds=0.2)


@pytest.fixture
async def api():
    async with EmulatorServer(quiet_config(requests_per_second=10.0, processing_seconds=0.5)) as server:
        yield server


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def people(n, long_every=0):
    for i in range(n):
        tasks = "y" * 150 if long_every and i % long_every == 0 else f"driving trucks {i}"
        yield {"recordId": f"id-{i % 97}", "occp_text": "truck driver", "tasks_text": tasks}


def read_output(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_inline_records_over_the_threshold_go_to_batch(coderd, broker, api):
    await coderd(api, batch_threshold=5, **PARTNER)
    records = list(people(8))
    await broker.publish({"topic": "anzsco", "records": records}, correlation_id="inline")
    [(cid, reply)] = await broker.replies(1)
    assert cid == "inline" and reply["status"] == "completed" and reply["route"] == "batch"
    assert reply["model"] == "00000000-0000-0000-0000-000000000002"
    assert [r["recordId"] for r in reply["records"]] == [r["recordId"] for r in records]
    first = reply["records"][0]
    assert first["codeStatus"] == "successful" and len(first["result"]) == 1 and first["suggestions"] == []
    assert first["input"] == {"occp_text": "truck driver", "tasks_text": "driving trucks 0"}
    assert api.stats.operations_created == 1 and api.stats.coding_calls == 0


async def test_auto_routing_on_both_tiers(coderd, broker, api):
    long_record = {"occp_text": "software developer", "tasks_text": "writing code " * 10}  # 138 characters
    await coderd(api, **PARTNER)
    await broker.publish({"topic": "anzsco", "records": [long_record, {"occp_text": "chef"}]}, correlation_id="p")
    [(_, reply)] = await broker.replies(1)
    assert reply["route"] == "batch" and reply["records"][0]["codeStatus"] == "successful"
    assert api.stats.operations_created == 1


async def test_public_tier_codes_long_records_as_invalid_and_large_requests_by_sync(coderd, broker, api):
    await coderd(api, tier="public", requests_per_second=10, batch_threshold=5)
    long_record = {"occp_text": "software developer", "tasks_text": "writing code " * 10}
    await broker.publish({"topic": "anzsco", "records": [long_record] + list(people(10))}, correlation_id="q")
    [(_, reply)] = await broker.replies(1)
    assert reply["route"] == "sync"
    assert reply["records"][0]["codeStatus"] == "invalid" and "partner" in reply["records"][0]["error"]
    assert all(r["codeStatus"] != "invalid" for r in reply["records"][1:])
    assert api.stats.operations_created == 0


async def test_a_20000_record_file_through_one_operation(coderd, broker, api, tmp_path):
    records = list(people(20000, long_every=1000))
    records[777] = "this line is not json"
    write_jsonl(tmp_path / "state" / "inbox" / "census" / "big.jsonl", records)
    daemon = await coderd(api, **PARTNER)
    await broker.publish({"topic": "anzsco", "inputFile": "census/big.jsonl"}, correlation_id="file")
    [(cid, reply)] = await broker.replies(1, timeout=120)
    assert reply["status"] == "completed" and reply["route"] == "batch"
    summary = reply["output"]
    assert summary["file"] == "census/big.coded.jsonl" and summary["records"] == 20000
    assert summary["successful"] + summary["unsuccessful"] + summary["invalid"] == 20000
    assert summary["invalid"] == 1
    lines = read_output(tmp_path / "state" / "outbox" / "census" / "big.coded.jsonl")
    assert len(lines) == 20000
    assert [r["recordId"] for i, r in enumerate(lines) if i != 777] == [
        f"id-{i % 97}" for i in range(20000) if i != 777]
    assert lines[777]["codeStatus"] == "invalid" and lines[777]["recordId"] is None
    assert lines[1000]["input"]["tasks_text"] == "y" * 150 and lines[1000]["codeStatus"] != "invalid"
    assert api.stats.operations_created == 1 and api.stats.uploads == 1
    assert not list((tmp_path / "state" / "jobs").iterdir())  # spool and download removed
    phases = [e["phase"] for e in daemon.events() if e.get("event") == "batch_phase"]
    assert phases[:4] == ["creating", "uploading", "polling", "downloading"] and phases[-1] == "delivering"


async def test_csv_input_with_explicit_output(coderd, broker, api, tmp_path):
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    with open(inbox / "staff.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["recordId", "occp_text", "tasks_text"])
        writer.writerow(["a", "Registered nurse", "caring for patients, giving medication"])
        writer.writerow(["b", "Chef", "cooking"])
    await coderd(api, **PARTNER)
    await broker.publish({"topic": "osca", "inputFile": "staff.csv", "outputFile": "out/staff.jsonl"})
    [(_, reply)] = await broker.replies(1)
    assert reply["output"]["records"] == 2
    lines = read_output(tmp_path / "state" / "outbox" / "out" / "staff.jsonl")
    assert [r["recordId"] for r in lines] == ["a", "b"]
    assert lines[0]["input"] == {"occp_text": "Registered nurse", "tasks_text": "caring for patients, giving medication"}


async def test_a_file_on_the_public_tier_is_coded_through_the_sync_worker(coderd, broker, api, tmp_path):
    write_jsonl(tmp_path / "state" / "inbox" / "small.jsonl", list(people(700)) + ["{broken"])
    await coderd(api, tier="public", requests_per_second=10)
    await broker.publish({"topic": "anzsco", "inputFile": "small.jsonl"})
    [(_, reply)] = await broker.replies(1)
    assert reply["route"] == "sync" and reply["output"]["records"] == 701 and reply["output"]["invalid"] == 1
    lines = read_output(tmp_path / "state" / "outbox" / "small.coded.jsonl")
    assert len(lines) == 701 and lines[-1]["codeStatus"] == "invalid"
    assert sorted(api.stats.records_per_call, reverse=True)[:2] == [300, 300]


@pytest.mark.parametrize("name, code", [
    ("../escape.jsonl", "path_not_allowed"),
    ("/etc/passwd", "path_not_allowed"),
    ("link/outside.jsonl", "path_not_allowed"),
    ("missing.jsonl", "input_not_found"),
])
async def test_paths_that_leave_the_inbox_are_refused(coderd, broker, api, tmp_path, name, code):
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    write_jsonl(tmp_path / "outside" / "outside.jsonl", people(2))
    (inbox / "link").symlink_to(tmp_path / "outside")
    await coderd(api, **PARTNER)
    await broker.publish({"topic": "anzsco", "inputFile": name}, correlation_id="p")
    [(_, reply)] = await broker.replies(1)
    assert reply["status"] == "failed" and reply["error"]["code"] == code
    assert str(tmp_path) not in reply["error"]["message"]


async def test_output_paths_that_leave_the_outbox_are_refused(coderd, broker, api, tmp_path):
    write_jsonl(tmp_path / "state" / "inbox" / "a.jsonl", people(2))
    await coderd(api, **PARTNER)
    await broker.publish({"topic": "anzsco", "inputFile": "a.jsonl", "outputFile": "../../x.jsonl"})
    [(_, reply)] = await broker.replies(1)
    assert reply["error"]["code"] == "path_not_allowed"


async def test_failed_operation_is_a_batch_failed_reply(coderd, broker, api):
    api.faults.batch_fail = "Inference failed: model unavailable"
    await coderd(api, batch_threshold=2, **PARTNER)
    await broker.publish({"topic": "anzsco", "records": list(people(3))}, correlation_id="f")
    [(_, reply)] = await broker.replies(1)
    assert reply["status"] == "failed" and reply["route"] == "batch"
    assert reply["error"] == {"code": "batch_failed", "message": "Inference failed: model unavailable", "details": []}


async def test_lost_upload_and_timed_out_operation_get_a_new_operation(coderd, broker):
    config = quiet_config(requests_per_second=10.0, processing_seconds=0.3, upload_timeout=5.0)
    async with EmulatorServer(config) as api:
        api.faults.lose_uploads = 1
        await coderd(api, batch_threshold=2, **PARTNER)
        await broker.publish({"topic": "anzsco", "records": list(people(3))}, correlation_id="t")
        [(_, reply)] = await broker.replies(1, timeout=60)
        assert reply["status"] == "completed" and len(reply["records"]) == 3
        assert api.stats.operations_created == 2 and api.stats.uploads == 1  # the lost one never arrived


async def test_expired_download_url_is_refreshed(coderd, broker, api):
    api.faults.expired_urls = 1
    daemon = await coderd(api, batch_threshold=2, **PARTNER)
    await broker.publish({"topic": "anzsco", "records": list(people(3))}, correlation_id="e")
    [(_, reply)] = await broker.replies(1)
    assert reply["status"] == "completed"
    assert any(e.get("event") == "batch_download_failed" for e in daemon.events())
    assert api.stats.operations_created == 1


# Killed while uploading, polling or downloading, a job is resumed by a replica on another
# host, its spool rebuilt from scratch (test_replicas.py): the harder case of the same path.
@pytest.mark.parametrize("phase", ["spooling", "creating", "polling", "delivering"])
async def test_sigkill_in_each_phase_resumes_the_same_operation(coderd, broker, tmp_path, phase):
    config = quiet_config(requests_per_second=2.0, processing_seconds=1.5)
    async with EmulatorServer(config) as api:
        # Each phase must last long enough to be caught: big files for spooling and delivering,
        # slow presigned transfers for uploading and downloading.
        count = 60000 if phase in ("spooling", "delivering") else 10000
        api.faults.transfer_delay = 2.0 if phase in ("uploading", "downloading") else 0.0
        write_jsonl(tmp_path / "state" / "inbox" / "job.jsonl", people(count))
        settings = dict(PARTNER, requests_per_second=2, batch_poll_seconds=0.5)
        daemon = await coderd(api, **settings)
        await broker.publish({"topic": "anzsco", "inputFile": "job.jsonl"}, correlation_id="crash")
        if phase == "spooling":
            await daemon.wait_for_event("request_journaled")
        else:
            await wait_for_phase(daemon, phase)
        await daemon.kill()
        jobs = subprocess.run([sys.executable, "-m", "daemon", "jobs", "--json"], cwd=ROOT, env=daemon.env,
                              capture_output=True, text=True, timeout=30)
        [listed] = [json.loads(line) for line in jobs.stdout.splitlines()]
        assert listed["correlation_id"] == "crash" and listed["phase"] in ("spooling", phase)
        api.faults.transfer_delay = 0.0
        await coderd(api, **settings)
        [(cid, reply)] = await broker.replies(1, timeout=120)
        assert cid == "crash" and reply["status"] == "completed" and reply["output"]["records"] == count
        assert api.stats.operations_created == 1
        assert len(read_output(tmp_path / "state" / "outbox" / "job.coded.jsonl")) == count


async def wait_for_phase(daemon, phase, timeout=60):
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(e.get("event") == "batch_phase" and e.get("phase") == phase for e in daemon.events()):
        assert asyncio.get_running_loop().time() < deadline, daemon.log_text()[-2000:]
        await asyncio.sleep(0.02)


async def test_a_job_whose_spool_vanished_is_rebuilt_for_the_same_operation(coderd, broker, api, tmp_path):
    write_jsonl(tmp_path / "state" / "inbox" / "v.jsonl", people(500))
    daemon = await coderd(api, **PARTNER)
    await broker.publish({"topic": "anzsco", "inputFile": "v.jsonl"}, correlation_id="v")
    await wait_for_phase(daemon, "polling")
    await daemon.kill()
    [job_dir] = (tmp_path / "state" / "jobs").iterdir()
    (job_dir / "manifest.jsonl").unlink()  # an operator's clean-up gone wrong
    restarted = await coderd(api, **PARTNER)
    [(_, reply)] = await broker.replies(1, timeout=60)
    assert reply["status"] == "completed" and reply["output"]["records"] == 500
    assert any(e.get("event") == "batch_spool_rebuilt" for e in restarted.events())
    assert api.stats.operations_created == 1


async def test_replicas_sharing_state_run_each_job_once(coderd, broker, tmp_path):
    config = quiet_config(requests_per_second=5.0, processing_seconds=3)
    async with EmulatorServer(config) as api:
        shared = tmp_path / "shared"
        write_jsonl(shared / "inbox" / "r.jsonl", people(3000))
        settings = dict(PARTNER, requests_per_second=5, batch_poll_seconds=0.3)
        first = await coderd(api, state_dir=shared, **settings)
        second = await coderd(api, state_dir=shared, **settings)
        await broker.publish({"topic": "anzsco", "inputFile": "r.jsonl"}, correlation_id="r")
        await asyncio.sleep(1)
        polling = [d for d in (first, second)
                   if any(e.get("event") == "batch_phase" and e.get("phase") == "polling" for e in d.events())]
        while not polling:
            await asyncio.sleep(0.1)
            polling = [d for d in (first, second)
                       if any(e.get("event") == "batch_phase" and e.get("phase") == "polling" for e in d.events())]
        assert len(polling) == 1  # one process runs the job
        await polling[0].kill()
        [(_, reply)] = await broker.replies(1, timeout=60)
        assert reply["status"] == "completed" and reply["output"]["records"] == 3000
        assert api.stats.operations_created == 1
