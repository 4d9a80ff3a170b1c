"""Operator endpoints against a running daemon: /healthz, /readyz, /metrics, coderd status."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from conftest import quiet_config
from harness import ROOT, DaemonProcess, daemon_env
from prometheus_client.parser import text_string_to_metric_families
from test_emulator_cli import free_port

from daemon.emulator import ThreadedEmulatorServer as EmulatorServer
from daemon.ops.status import render

GUIDE = {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}


def samples(text: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def get(session, url):
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_health_readiness_and_metrics(coderd, broker):
    port = free_port()
    async with EmulatorServer(quiet_config(requests_per_second=20)) as api, aiohttp.ClientSession() as session:
        daemon = await coderd(api, requests_per_second=20, http_listen=f"127.0.0.1:{port}", quota_burst="0.05")
        base = f"http://127.0.0.1:{port}"
        assert (await get(session, f"{base}/healthz"))[0] == 200
        await daemon.wait_for_event("replica_active")  # a lone replica takes the lease
        status, body = await get(session, f"{base}/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["ready"] and ready["broker"] == "connected"
        assert ready["consumer"] == "active" and ready["token"]["obtainable"]
        replica = ready["replica"]
        assert replica["role"] == "active" and replica["takeovers"] == 1
        assert 0 <= time.time() - replica["active_since"] < 60
        assert ready["coding_api"] == {"builtin_emulator": False, "url": api.url}
        for i in range(3):
            distinct = {**GUIDE, "occp_text": f"{GUIDE['occp_text']} {i}"}  # neither cached nor deduplicated
            await broker.publish({"topic": "anzsco", "records": [distinct, {"occp_text": "x"}]},
                                 correlation_id=f"m{i}")
        await broker.replies(3)
        await daemon.wait_for_event("request_done", count=3)
        ready = json.loads((await get(session, f"{base}/readyz"))[1])
        assert ready["consumer"] == "active" and ready["quota"]["used"] >= 2
        assert ready["last_minute"]["records"] >= 3 and ready["token"]["requests"] == 1
        assert ready["quota"]["pace_calls_per_hour"] > 0 and ready["quota"]["pacing_wait_seconds"] == 0
        assert ready["cache"]["misses"] >= 3 and ready["cache"]["hits"] == 0
        status, text = await get(session, f"{base}/metrics")
        found = samples(text)
        assert status == 200
        assert found[("coderd_requests_total", (("error", ""), ("route", "sync"), ("status", "completed")))] == 3
        assert found[("coderd_records_total", (("outcome", "invalid"), ("route", "sync")))] == 3
        assert found[("coderd_coding_calls_total", ())] >= 1
        assert found[("coderd_quota_used", ())] >= 2
        assert found[("coderd_token_requests", ())] == 1
        assert found[("coderd_request_queue_depth", (("lane", "bulk"),))] == 0
        assert found[("coderd_request_queue_depth", (("lane", "interactive"),))] == 0
        assert ready["lanes"]["bulk"]["p50_seconds"] is not None and ready["lanes"]["interactive"]["p50_seconds"] is None
        assert found[("coderd_consumer", (("state", "active"),))] == 1
        assert found[("coderd_consumer", (("state", "standby"),))] == 0
        assert found[("coderd_replica_active", ())] == 1.0
        assert found[("coderd_takeovers_total", ())] == 1.0
        assert found[("coderd_reply_latency_seconds_count", (("lane", "bulk"), ("route", "sync")))] == 3
        assert ("coderd_batch_jobs", (("phase", "polling"),)) in found
        assert found[("coderd_builtin_emulator", ())] == 0
        assert found[("coderd_quota_pace_calls_per_hour", ())] == pytest.approx(
            ready["quota"]["pace_calls_per_hour"], rel=0.05)
        assert found[("coderd_cache_lookups_total", (("result", "miss"),))] >= 3

        env = {**daemon.env}
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "daemon", "status"], cwd=ROOT,
                                       env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "connected" in done.stdout and "active" in done.stdout and "quota" in done.stdout
        assert "even pace" in done.stdout and "result cache" in done.stdout
        assert f"coding API    {api.url}" in done.stdout and "EMULATOR" not in done.stdout
        assert re.search(r"^  consumer      active$", done.stdout, re.MULTILINE)
        assert re.search(r"^  replica       active since \d\d:\d\d:\d\d UTC \(1 takeover\)$", done.stdout, re.MULTILINE)


async def test_the_builtin_emulator_is_said_everywhere(broker, tmp_path):
    """api_url unset: the documented demo default. Ready as ever, but /readyz, /metrics and
    `coderd status` all say the coding API is coderd's own emulator, not the ABS service."""
    port = free_port()
    env = daemon_env("unused", broker, tmp_path / "state", http_listen=f"127.0.0.1:{port}")
    for key in ("CODERD_API_URL", "CODERD_AUTH_URL", "CODERD_CLIENT_ID", "CODERD_CLIENT_SECRET"):
        env.pop(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")} | env
    daemon = await DaemonProcess(env, tmp_path / "coderd.log").start()
    try:
        await daemon.wait_for_event("consuming")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            status, body = await get(session, f"{base}/readyz")
            ready = json.loads(body)
            assert status == 200 and ready["ready"]  # readiness itself is unchanged
            api = ready["coding_api"]
            assert api["builtin_emulator"] is True
            assert api["url"].startswith("http://127.0.0.1:") and "EMULATOR" in api["note"]
            status, text = await get(session, f"{base}/metrics")
            assert samples(text)[("coderd_builtin_emulator", ())] == 1
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "daemon", "status"], cwd=ROOT,
                                       env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        loud = done.stdout.splitlines()[1]  # right under the ready line
        assert "BUILT-IN EMULATOR" in loud and "NOT THE REAL ABS SERVICE" in loud and "api_url" in loud
    finally:
        await daemon.kill()


def test_status_renders_an_answer_without_coding_api():
    """An older daemon's /readyz has no coding_api: `coderd status` still prints it."""
    state = {"ready": True, "reasons": [], "broker": "connected", "consumer": "active",
             "token": {"obtainable": True, "note": "", "age_seconds": 3.0, "requests": 1},
             "quota": {"used": 1, "remaining": 9, "daily_quota": 10}, "last_minute": {"calls": 0, "records": 0},
             "queue_depth": 0, "batch_jobs": {}, "tasks": {}}
    text = render("127.0.0.1:9464", state)
    assert "ready" in text and "coding API" not in text and "EMULATOR" not in text
    assert "  consumer      active" in text and "replica" not in text  # no replica role from an older daemon


def test_status_renders_the_replica_role():
    """Active since when (UTC) and how many takeovers; a standby says who acts instead."""
    state = {"ready": True, "reasons": [], "broker": "connected", "consumer": "standby",
             "replica": {"role": "standby", "active_since": None, "takeovers": 0},
             "token": {"obtainable": True, "note": "", "age_seconds": 3.0, "requests": 1},
             "quota": {"used": 1, "remaining": 9, "daily_quota": 10}, "last_minute": {"calls": 0, "records": 0},
             "queue_depth": 0, "batch_jobs": {}, "tasks": {}}
    lines = render("127.0.0.1:9464", state).splitlines()
    assert "  consumer      standby" in lines and "  replica       standby: another replica holds the lease" in lines
    assert not any("waiting" in line or "nothing delivered" in line for line in lines)
    state["replica"] = {"role": "standby", "active_since": time.time() - 600, "takeovers": 1}
    assert "  replica       standby: another replica holds the lease (was active before: 1 takeover)" in \
        render("127.0.0.1:9464", state).splitlines()
    now = time.time()
    state |= {"consumer": "active", "replica": {"role": "active", "active_since": now, "takeovers": 2}}
    since = time.strftime("%H:%M:%S", time.gmtime(now))
    assert f"  replica       active since {since} UTC (2 takeovers)" in render("127.0.0.1:9464", state).splitlines()
    state["replica"]["active_since"] = now - 3 * 86400  # days ago: the date too
    day = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - 3 * 86400))
    assert f"  replica       active since {day} UTC (2 takeovers)" in render("127.0.0.1:9464", state).splitlines()


async def test_readiness_reports_why_not(coderd, broker, tmp_path):
    port = free_port()
    async with EmulatorServer(quiet_config(requests_per_second=20)) as api, aiohttp.ClientSession() as session:
        await coderd(api, requests_per_second=20, http_listen=f"127.0.0.1:{port}", daily_quota=1)
        await broker.publish({"topic": "anzsco", "record": GUIDE})  # the model lookup uses the one call
        for _ in range(100):
            status, body = await get(session, f"http://127.0.0.1:{port}/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503 and any("quota" in reason for reason in json.loads(body)["reasons"])
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "daemon", "status"], cwd=ROOT,
                                       env={**__import__("os").environ, "CODERD_HTTP_LISTEN": "127.0.0.1:1"},
                                       capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "not running" in (done.stdout + done.stderr)
