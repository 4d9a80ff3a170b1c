"""The operator console at / and its /status.json, in a real headless browser (Debian's
chromium: scripts/test installs it; without it the browser tests skip and say so): a
daemon in-process codes some requests, then the rendered DOM must show its own figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import quiet_config
from test_endpoints import samples
from test_supervision import daemon_in_process

from daemon.emulator import EmulatorServer
from daemon.ops import console
from daemon.ops.history import History

CHROMIUM = "/usr/bin/chromium"
LAPTOP, PHONE = (1366, 768), (390, 844)
TEXTS = ["software developer", "registered nurse", "truck driver", "primary school teacher", "chef",
         "electrician", "accountant", "retail sales assistant"]


def need_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: the console's browser test needs Debian's headless chromium "
                    "(scripts/test installs it as root: apt-get install chromium)")


class Dom(HTMLParser):
    """The rendered page: each element's tag, attributes, text and enclosing ids."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "circle", "line", "rect", "path"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        for outer in self.stack:  # cells, items and blocks read apart
            outer["text"] += " "
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "ids": [e["attrs"].get("id") for e in self.stack]}
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if any(e["tag"] == tag for e in self.stack):
            while self.stack.pop()["tag"] != tag:
                pass

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def by_id(self, id_: str) -> dict:
        found = [e for e in self.elements if e["attrs"].get("id") == id_]
        assert found, f"no element #{id_} in the rendered page"
        return found[0]

    def text(self, id_: str) -> str:
        return " ".join(self.by_id(id_)["text"].split())

    def inside(self, id_: str, tag: str, cls: str | None = None) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag and id_ in e["ids"]
                and (cls is None or cls in e["attrs"].get("class", "").split())]


async def browse(url: str, tmp_path: Path, size: tuple[int, int], name: str) -> Dom:
    """Load the page in headless chromium for 8 s of virtual time; its DOM, and a screenshot."""
    shot = tmp_path / f"{name}.png"
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={size[0]},{size[1]}",
        "--virtual-time-budget=8000", f"--screenshot={shot}", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    assert shot.stat().st_size > 10_000, "no screenshot"
    return Dom(out.decode())


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


async def test_console_shows_the_running_daemons_own_figures(broker, tmp_path):
    need_chromium()
    async with EmulatorServer(quiet_config()) as api, aiohttp.ClientSession() as session, \
            daemon_in_process(broker, tmp_path, api) as (_, base):
        async with session.get(f"{base}/metrics") as response:
            calls_before = samples(await response.text())[("coderd_coding_calls_total", ())]
        for i in range(3):  # distinct texts: neither cached nor deduplicated
            records = [{"recordId": f"r{j}", "occp_text": f"{text} {i}", "tasks_text": "daily duties at work"}
                       for j, text in enumerate(TEXTS)]
            await broker.publish({"topic": "anzsco", "records": records}, correlation_id=f"c{i}")
        replies = await broker.answered({"c0", "c1", "c2"}, timeout=30)
        assert all(reply["status"] == "completed" for reply in replies.values())
        async with session.get(f"{base}/metrics") as response:
            calls_made = samples(await response.text())[("coderd_coding_calls_total", ())] - calls_before
        assert calls_made >= 1

        async with session.get(f"{base}/") as response:
            page = await response.text()
            assert response.status == 200 and response.content_type == "text/html"
            policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://(?!www\.w3\.org/2000/svg)""", page), \
            "the console must load nothing from anywhere"
        for path in ("/", "/status.json"):  # read-only
            async with session.post(f"{base}{path}") as response:
                assert response.status == 405

        laptop = await browse(f"{base}/", tmp_path, LAPTOP, "console-laptop")
        phone = await browse(f"{base}/", tmp_path, PHONE, "console-phone")
        async with session.get(f"{base}/status.json") as response:
            assert response.status == 200
            status = await response.json()

    assert status["quota"]["used"] >= calls_made and status["consumer"] == "active"
    assert status["replica"]["role"] == "active" and status["replica"]["takeovers"] == 1
    at, today = time.gmtime(status["replica"]["active_since"]), time.gmtime(status["history"]["now"])
    day = "" if at[:3] == today[:3] else time.strftime("%Y-%m-%d ", at)  # the date only when not today
    since = f"active since {day}{time.strftime('%H:%M:%S', at)} UTC (1 takeover)"
    assert sum(minute[1] for minute in status["history"]["minutes"]) >= calls_made
    for dom in (laptop, phone):
        assert dom.text("ready") == "ready"
        assert dom.text("consumer") == status["consumer"] == "active"
        assert "ok" in dom.by_id("consumer")["attrs"]["class"].split()
        assert dom.text("consumer-note") == "consuming requests"
        assert dom.text("replica") == since
        assert dom.text("broker") == "connected" and dom.text("consuming") == "consuming"
        assert dom.text("api") == api.url and dom.by_id("emulator")["attrs"].get("hidden") is not None
        used = status["quota"]["used"]
        assert int(dom.by_id("quota-used")["attrs"]["data-value"]) == used
        assert dom.text("quota-used").replace(",", "") == str(used)
        assert dom.text("quota-daily").replace(",", "") == str(status["quota"]["daily_quota"])
        calls_hour = int(dom.by_id("calls-hour")["attrs"]["data-value"])
        assert calls_hour >= calls_made and dom.text("calls-hour").replace(",", "") == str(calls_hour)
        assert int(dom.by_id("records-hour")["attrs"]["data-value"]) >= len(TEXTS) * 3

        # The burn-down: the even-pace line from the quota at 00:00 to 0 at 24:00, and the
        # calls left ending (the last mark) at today's figure.
        daily = status["quota"]["daily_quota"]
        pace = dom.inside("burndown", "path", "pace")
        assert len(pace) == 1 and path_points(pace[0]["attrs"]["d"]) == [(40.0, 8.0), (390.0, 132.0)]
        left = dom.inside("burndown", "path", "data")
        assert len(left) == 1 and len(path_points(left[0]["attrs"]["d"])) >= 2
        mark = dom.inside("burndown", "circle", "data")[-1]
        assert float(mark["attrs"]["cy"]) == pytest.approx(132 - (daily - used) / daily * 124, abs=0.5)
        assert dom.text("burndown").endswith(f"{daily - used:,} left")
        # Calls per minute: one bar per busy minute, together the hour's calls.
        bars = dom.inside("calls-chart", "rect", "data")
        assert bars and sum(int(b["attrs"]["data-value"]) for b in bars) == calls_hour
        assert dom.inside("records-chart", "rect", "data") and dom.inside("per-call-chart", "path", "data")
        per_call = float(dom.by_id("per-call-hour")["attrs"]["data-value"])
        assert 1 <= per_call <= 300
        if "lanes" in status:  # each lane's own figures: queue, waiting records, p50 and p99
            rows = [row["text"].split() for row in dom.inside("lanes-body", "tr")]
            assert [row[0] for row in rows] == list(status["lanes"])
            for row, lane in zip(rows, status["lanes"].values(), strict=True):
                assert row[1:3] == [f"{lane['queue_depth']:,}", f"{lane['waiting_records']:,}"]
                shown = [token for token in row[3:] if token != "s"]  # "0.22 s 2.51 s", or "– –"
                for text, q in zip(shown, ("p50_seconds", "p99_seconds"), strict=True):
                    if lane[q] is None:
                        assert text == "–"
                    else:  # two decimals, rounded by the page's JavaScript (a half may round either way)
                        assert float(text.replace(",", "")) == pytest.approx(lane[q], abs=0.0051)
            assert status["lanes"]["bulk"]["p50_seconds"] is not None  # our requests' replies
        else:
            assert dom.by_id("lanes")["attrs"].get("hidden") is not None
        assert "misses" in dom.text("cache-detail") and dom.text("cache-rate").endswith("%")
        assert len(dom.inside("batch-body", "tr")) == 6
        assert dom.text("updated").endswith("UTC") and dom.text("stale") == ""

    docs = Path(__file__).resolve().parent.parent / "docs"
    if os.environ.get("CODERD_CONSOLE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copy(tmp_path / "console-laptop.png", docs / "console.png")


FULL = {  # a status document with every panel's data in it (the shape /status.json has)
    "ready": False, "reasons": ["daily quota used up: consuming resumes at 00:00 UTC"],
    "coding_api": {"builtin_emulator": True, "url": "http://127.0.0.1:1", "note": "BUILT-IN EMULATOR"},
    "broker": "connected", "consumer": "paused", "pauses": {"quota": "daily quota used up"},
    "replica": {"role": "active", "active_since": 1_700_000_000.0 - 3600, "takeovers": 2},
    "token": {"obtainable": False, "note": "credentials rejected", "age_seconds": None, "requests": 3},
    "quota": {"used": 600, "remaining": 0, "daily_quota": 600, "resets_in_seconds": 3600, "tokens": 0.0,
              "burst": 30.0, "pace_calls_per_hour": 0.0, "even_pace_remaining": 25.0, "pacing_wait_seconds": 0.0,
              "waiting_records": 12},
    "cache": None, "last_minute": {"calls": 0, "records": 0}, "queue_depth": 7,
    "batch_jobs": {"polling": 2, "delivering": 1}, "batch_oldest_seconds": {"polling": 7300, "delivering": 40},
    "tasks": {"realtime": {"state": "running", "crashes_recent": 2, "last_error": "RuntimeError: boom"}},
    "lanes": {"interactive": {"queue_depth": 1, "waiting_records": 3, "p50_seconds": 0.4, "p99_seconds": 2.5},
              "bulk": {"queue_depth": 6, "waiting_records": 900, "p50_seconds": 30.0, "p99_seconds": None}},
    "errors": {"api": {"429": 4, "503": 1}, "task_crashes": {"realtime": 2}, "replies": {"upstream_error": 5}},
}


STANDBY = {**FULL, "ready": True, "reasons": [], "consumer": "standby", "coding_api": {"builtin_emulator": False,
           "url": "https://api.example"}, "token": {"obtainable": True, "note": "", "age_seconds": 30.0, "requests": 1},
           "pauses": {"standby": "standing by: another replica holds the lease"},
           "replica": {"role": "standby", "active_since": 1_700_000_000.0 - 86400, "takeovers": 1}}


async def test_every_panel_renders_lanes_banner_errors_and_jobs(tmp_path):
    """The panels a healthy daemon leaves empty, from a full document served beside the page;
    then a standby replica's."""
    need_chromium()
    clock = History(clock=lambda: 1_700_000_000.0)
    document = {**FULL, "history": clock.document(600, 600)}
    app = web.Application()

    async def page(request):
        return console.page_response()

    async def status(request):
        return web.json_response(document)

    app.router.add_get("/", page)
    app.router.add_get("/status.json", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        dom = await browse(f"http://127.0.0.1:{port}/", tmp_path, PHONE, "console-full")
        document = {**STANDBY, "history": clock.document(600, 600)}
        standby = await browse(f"http://127.0.0.1:{port}/", tmp_path, LAPTOP, "console-standby")
    finally:
        await runner.cleanup()
    assert "EMULATOR" in dom.text("emulator") and dom.by_id("emulator")["attrs"].get("hidden") is None
    assert dom.text("ready") == "not ready" and "daily quota used up" in dom.text("reasons")
    assert dom.text("consuming") == "paused: daily quota used up"
    assert dom.text("consumer") == "paused" and "warn" in dom.by_id("consumer")["attrs"]["class"].split()
    assert dom.text("replica") == "active since 21:13:20 UTC (2 takeovers)"  # still holds the lease, paused
    assert dom.text("token").startswith("NOT obtainable: credentials rejected")
    assert dom.by_id("lanes")["attrs"].get("hidden") is None
    lanes = [" ".join(row["text"].split()) for row in dom.inside("lanes-body", "tr")]
    assert lanes == ["interactive 1 3 0.4 s 2.5 s", "bulk 6 900 30 s –"]
    jobs = {row["text"].split()[0]: " ".join(row["text"].split()[1:]) for row in dom.inside("batch-body", "tr")}
    assert jobs["polling"] == "2 2 h" and jobs["delivering"] == "1 40 s" and jobs["spooling"] == "0 –"
    errors = dom.text("errors-body")
    assert "4 × 429 throttled" in errors and "5 × upstream_error" in errors
    assert "2 × realtime: RuntimeError: boom" in errors
    assert dom.text("cache-rate") == "off" and dom.text("quota-remaining") == "0"

    assert standby.text("ready") == "ready" and standby.text("reasons") == ""
    assert standby.text("consumer") == "standby" and "idle" in standby.by_id("consumer")["attrs"]["class"].split()
    assert standby.text("consumer-note") == "another replica consumes"
    assert standby.text("replica") == "standby: another replica holds the lease (was active before: 1 takeover)"
    assert standby.text("consuming") == "standing by: takes over if the active replica goes"
    assert standby.by_id("consuming")["attrs"]["class"] == "muted"
    for page in (dom, standby):
        assert not any("waiting" in page.text(id_) for id_ in ("consumer", "consumer-note", "replica", "consuming"))


def test_history_bins_minutes_and_keeps_one_burn_down_point_per_five_minutes():
    now = [86400 * 20000 + 3600.0]  # 01:00 UTC
    used = [100]
    history = History(clock=lambda: now[0])
    history.bind(quota_used=lambda: used[0])
    assert history.burn_down() == [[now[0], 100]]  # sampled when bound
    for step in range(12):  # a call every 50 s for 10 minutes, 10 records each
        used[0] += 1
        history.record_call(10)
        now[0] += 50
    minutes = history.per_minute()
    assert len(minutes) == 60 and minutes[-1][0] == now[0] // 60 * 60
    assert sum(m[1] for m in minutes) == 12 and sum(m[2] for m in minutes) == 120
    base = 86400 * 20000
    assert history.burn_down() == [[base + 3850, 106], [base + 4150, 112]]  # the last of 01:00-01:05, 01:05-01:10
    now[0] += 3600  # an hour later the minutes have gone
    assert sum(m[1] for m in history.per_minute()) == 0
    document = history.document(daily_quota=1000, used_now=112)
    quota = document["quota"]
    assert quota["even_pace"] == [[86400 * 20000, 1000], [86400 * 20001, 0]]
    assert quota["used"][-1] == [now[0], 112]
    now[0] = 86400 * 20001 + 10  # the UTC day changes: a new burn-down
    used[0] = 0
    assert history.burn_down() == []
    history.record_call(5)
    assert history.burn_down() == [[now[0], 0]]
    json.dumps(history.document(1000, 0))  # /status.json can carry it


def test_errors_are_read_from_the_registry_by_kind():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    api = Counter("coderd_api_errors", "", ["status"], registry=registry)
    crashes = Counter("coderd_task_crashes", "", ["task"], registry=registry)
    requests = Counter("coderd_requests", "", ["route", "status", "error"], registry=registry)
    api.labels("429").inc(3)
    crashes.labels("realtime").inc()
    requests.labels("sync", "failed", "upstream_error").inc(2)
    requests.labels("batch", "failed", "upstream_error").inc()
    requests.labels("sync", "completed", "").inc(9)
    assert console.errors(registry) == {"api": {"429": 3.0}, "task_crashes": {"realtime": 1.0},
                                        "replies": {"upstream_error": 3.0}}
