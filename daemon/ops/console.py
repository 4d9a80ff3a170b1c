"""The operator console: a read-only page at / (console.html, self-contained) that
refreshes itself from /status.json: the /readyz snapshot, plus the charts' history, the
errors counted in /metrics by kind, why consuming is paused, and the batch jobs' ages."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable
from functools import cache
from importlib.resources import files

from aiohttp import web

from . import history, metrics

# Families the errors panel reads from the registry: /metrics' own numbers, by kind.
ERRORS = {"coderd_api_errors": ("api", "status"), "coderd_task_crashes": ("task_crashes", "task")}


def errors(registry=metrics.REGISTRY) -> dict:
    """{"api": {status: n}, "task_crashes": {task: n}, "replies": {error code: n}}: counters
    since the process started, as /metrics exports them (zeros left out)."""
    found: dict[str, dict[str, float]] = {"api": {}, "task_crashes": {}, "replies": {}}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total") or not sample.value:
                continue
            if family.name in ERRORS:
                kind, label = ERRORS[family.name]
                found[kind][sample.labels[label]] = sample.value
            elif family.name == "coderd_requests" and sample.labels.get("error"):
                code = sample.labels["error"]
                found["replies"][code] = found["replies"].get(code, 0) + sample.value
    return found


def status_document(snapshot: dict, pauses: dict[str, str], jobs: Iterable) -> dict:
    """/status.json: the snapshot as /readyz has it, and what the console draws besides."""
    now, oldest = time.time(), {}
    for job in jobs:
        oldest[job.phase] = max(oldest.get(job.phase, 0), round(now - job.created_at))
    quota = snapshot["quota"]
    return {**snapshot, "pauses": pauses, "batch_oldest_seconds": oldest, "errors": errors(),
            "history": history.document(quota["daily_quota"], quota["used"])}


@cache
def _page() -> tuple[bytes, str]:
    html = files(__package__).joinpath("console.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                        for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL))

    # Nothing but the page's own script and style, and fetches back to this listener.
    policy = (f"default-src 'none'; connect-src 'self'; script-src {hashes('script')}; "
              f"style-src {hashes('style')}; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return html.encode(), policy


def page_response() -> web.Response:
    body, policy = _page()
    return web.Response(body=body, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})
