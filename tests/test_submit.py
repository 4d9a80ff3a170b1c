"""`coderd submit FILE` end to end: a real `coderd run` process, the local broker, the
emulator, and `coderd submit` itself as a process (the way an analyst runs it)."""

import asyncio
import csv
import hashlib
import json
import os
import signal
import sys

import pytest
from conftest import quiet_config
from harness import ROOT

from daemon.emulator import Faults
from daemon.emulator import ThreadedEmulatorServer as EmulatorServer
from daemon.tools.convert import CSV_COLUMNS

JOBS = ["registered nurse", "truck driver", "software developer", "chef", "primary school teacher"]


def write_staff_csv(path, n, malformed=()):
    with open(path, "w", newline="") as handle:
        handle.write("recordId,occp_text,tasks_text\n")
        for i in range(n):
            if i in malformed:  # an unquoted comma: one field too many
                handle.write(f"s{i},{JOBS[i % 5]},caring, for patients\n")
            else:
                handle.write(f"s{i},{JOBS[i % 5]},daily duties number {i}\n")


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


async def start_submit(daemon, *args):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "submit", *map(str, args), cwd=str(ROOT),
        env={**os.environ, **daemon.env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def submit(daemon, *args, timeout=120):
    process = await start_submit(daemon, *args)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


async def queue_exists(broker, name) -> bool:
    try:
        await broker.message_count(name)
        return True
    except Exception:
        return False


@pytest.fixture
async def fast_api():
    async with EmulatorServer(quiet_config(requests_per_second=20)) as server:
        yield server


async def test_a_csv_becomes_a_coded_csv_in_input_order(coderd, broker, fast_api, tmp_path):
    daemon = await coderd(fast_api, requests_per_second=20)
    staff = tmp_path / "staff.csv"
    write_staff_csv(staff, 700, malformed={401})
    code, out, err = await submit(daemon, staff, "--topic", "osca")
    assert code == 0, err
    header, rows = read_csv(tmp_path / "staff.coded.csv")
    assert header == CSV_COLUMNS
    assert [r["recordId"] for r in rows] == [f"s{i}" if i != 401 else "" for i in range(700)]
    bad = rows[401]
    assert bad["codeStatus"] == "invalid" and "line 403" in bad["error"]
    assert all(r["codeStatus"] in ("successful", "unsuccessful") for i, r in enumerate(rows) if i != 401)
    assert rows[2]["input.occp_text"] == "software developer" and rows[2]["input.tasks_text"] == "daily duties number 2"
    assert any(r["codeStatus"] == "successful" and r["result.codeCategory"] for r in rows)
    assert "700 records" in out and "1 invalid" in out and str(tmp_path / "staff.coded.csv") in out
    assert fast_api.stats.records_coded == 699  # three request messages; the malformed row never sent
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("staff")) == ["staff.coded.csv", "staff.csv"]
    assert not await queue_exists(broker, reply_queue(staff))


def reply_queue(path):
    st = path.stat()
    return "coderd.submit." + hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]


async def test_resume_after_kill_codes_each_chunk_once(coderd, broker, tmp_path):
    api = await EmulatorServer(quiet_config(requests_per_second=1.0)).start()
    try:
        daemon = await coderd(api)  # 1 call/s: 300 records a second
        staff, n = tmp_path / "big.csv", 3000
        write_staff_csv(staff, n)
        side = tmp_path / "big.coded.csv.partial.jsonl"
        first = await start_submit(daemon, staff, "--topic", "anzsco")
        for _ in range(600):  # wait until some answers are on disk
            lines = side.read_text().splitlines() if side.exists() else []
            if sum('"chunk"' in line for line in lines) >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no answers within 30 s")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        events = [json.loads(line) for line in side.read_text().splitlines()[1:]]
        answered = {e["chunk"] for e in events if "chunk" in e}
        published = {e["published"] for e in events if "published" in e}
        assert answered and len(answered) < n // 300 and published > answered
        assert (tmp_path / "big.coded.csv").exists() is False
        code, out, err = await submit(daemon, staff, "--topic", "anzsco")
        assert code == 0, err
        header, rows = read_csv(tmp_path / "big.coded.csv")
        assert header == CSV_COLUMNS and [r["recordId"] for r in rows] == [f"s{i}" for i in range(n)]
        assert all(r["codeStatus"] in ("successful", "unsuccessful") for r in rows)
        await asyncio.sleep(2.5)  # a request published twice would be coded (1 call/s) by now
        assert api.stats.records_coded < 2 * n
        assert api.stats.records_coded == n  # no chunk was coded twice
        # A chunk published again (its first reply lost with the killed submit) may be
        # answered twice, the second time from the result cache: never coded twice.
        assert sum(e.get("event") == "request_done" for e in daemon.events()) >= n // 300
        assert not side.exists()
    finally:
        await api.stop()


async def test_a_failed_reply_is_reported_and_exits_1(coderd, broker, fast_api, tmp_path):
    daemon = await coderd(fast_api, requests_per_second=20)
    staff = tmp_path / "staff.csv"
    write_staff_csv(staff, 10)
    code, out, err = await submit(daemon, staff, "--topic", "nosuchtopic")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("coderd submit: ") and "unknown_topic" in last and "has no topic 'nosuchtopic'" in last
    assert not (tmp_path / "staff.coded.csv").exists()
    # the run can be resumed: its state and its reply queue are kept
    assert (tmp_path / "staff.coded.csv.partial.jsonl").exists() and await queue_exists(broker, reply_queue(staff))
    channel = await broker.connection.channel()
    await channel.queue_delete(reply_queue(staff))
    await channel.close()


async def test_large_file_on_the_partner_tier_goes_as_one_input_file(coderd, tmp_path):
    api = await EmulatorServer(quiet_config(requests_per_second=10.0, processing_seconds=0.5)).start()
    try:
        daemon = await coderd(api, tier="partner", requests_per_second=10, batch_poll_seconds=0.2,
                              batch_threshold=50)
        staff = tmp_path / "people.csv"
        write_staff_csv(staff, 120, malformed={7})
        code, out, err = await submit(daemon, staff, "--topic", "anzsco")
        assert code == 0, err
        header, rows = read_csv(tmp_path / "people.coded.csv")
        assert header == CSV_COLUMNS and len(rows) == 120
        assert rows[7]["codeStatus"] == "invalid" and rows[8]["recordId"] == "s8"
        assert api.stats.operations_created == 1 and api.stats.coding_calls == 0
        assert "120 records" in out and "1 invalid" in out
        state = tmp_path / "state"
        assert not any((state / "inbox" / "submit").iterdir()) and not any((state / "outbox" / "submit").iterdir())
    finally:
        await api.stop()


async def test_unanswered_requests_are_published_again_and_replies_deduplicated(coderd, tmp_path):
    api = await EmulatorServer(quiet_config(requests_per_second=20.0, faults=Faults(latency=2.5))).start()
    try:
        daemon = await coderd(api, requests_per_second=20)
        staff = tmp_path / "staff.csv"
        write_staff_csv(staff, 900)
        code, out, err = await submit(daemon, staff, "--timeout", "1")
        assert code == 0, err
        assert "publishing it again" in err
        _, rows = read_csv(tmp_path / "staff.coded.csv")
        assert [r["recordId"] for r in rows] == [f"s{i}" for i in range(900)]
        await asyncio.sleep(3)
        assert api.stats.records_coded > 900  # some chunks were coded twice, each kept once
    finally:
        await api.stop()
