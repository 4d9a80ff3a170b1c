"""Prometheus metrics (prometheus_client), on a registry of coderd's own.

Counters and histograms are updated where things happen; gauges of live state (quota,
token, limiter, consumer) are read from the running objects when scraped.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

requests = Counter("coderd_requests", "Requests answered, by route and outcome",
                   ["route", "status", "error"], registry=REGISTRY)
records = Counter("coderd_records", "Records answered, by route and codeStatus",
                  ["route", "outcome"], registry=REGISTRY)
coding_calls = Counter("coderd_coding_calls", "Real-time coding calls made", registry=REGISTRY)
records_per_call = Histogram("coderd_records_per_call", "Records carried by each real-time coding call",
                             buckets=(1, 10, 50, 100, 200, 250, 299, 300), registry=REGISTRY)
api_errors = Counter("coderd_api_errors", "Failed /v1 calls, by HTTP status (none: no answer)",
                     ["status"], registry=REGISTRY)
reply_latency = Histogram("coderd_reply_latency_seconds", "From delivery to confirmed reply, by route and lane",
                          ["route", "lane"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600),
                          registry=REGISTRY)
throttle_wait = Gauge("coderd_throttle_wait_seconds", "Seconds calls have waited for a limiter slot, in total",
                      registry=REGISTRY)
quota_used = Gauge("coderd_quota_used", "Calls to /v1 counted today (UTC)", registry=REGISTRY)
quota_remaining = Gauge("coderd_quota_remaining", "Calls to /v1 left today (UTC)", registry=REGISTRY)
token_age = Gauge("coderd_token_age_seconds", "Age of the shared token (-1: none)", registry=REGISTRY)
token_requests = Gauge("coderd_token_requests", "Token requests made by this process", registry=REGISTRY)
queue_depth = Gauge("coderd_request_queue_depth", "Requests waiting in a lane's request queue (-1: unknown)",
                    ["lane"], registry=REGISTRY)
dead_letter_depth = Gauge("coderd_dead_letter_queue_depth", "Messages in a lane's dead-letter queue "
                          "(-1: unknown)", ["lane"], registry=REGISTRY)
token_obtainable = Gauge("coderd_token_obtainable", "1 while a token is cached or can be fetched now",
                         registry=REGISTRY)
quota_daily = Gauge("coderd_quota_daily", "The day's quota of calls to /v1 (daily_quota)", registry=REGISTRY)
waiting_records = Gauge("coderd_waiting_records", "Records waiting in the real-time worker for a call, by lane",
                        ["lane"], registry=REGISTRY)
consumer_state = Gauge("coderd_consumer", "1 for the consumer's current state",
                       ["state"], registry=REGISTRY)
broker_connected = Gauge("coderd_broker_connected", "1 when connected to the broker", registry=REGISTRY)
builtin_emulator = Gauge("coderd_builtin_emulator",
                         "1 when coding through coderd's built-in emulator (api_url unset), not the real API",
                         registry=REGISTRY)
batch_jobs = Gauge("coderd_batch_jobs", "Journaled batch jobs, by phase", ["phase"], registry=REGISTRY)
state_dir_errors = Counter("coderd_state_dir_errors", "Writes to state_dir that failed (disk full, read-only)",
                           registry=REGISTRY)
state_dir_writable = Gauge("coderd_state_dir_writable", "1 while state_dir can be written", registry=REGISTRY)
duplicate_requests = Counter("coderd_duplicate_requests", "Requests delivered again after their reply was "
                             "confirmed: acked, not coded again", registry=REGISTRY)
records_deduplicated = Counter("coderd_records_deduplicated", "Records that rode along in a call carrying the "
                               "same text for another record: no API record spent", registry=REGISTRY)
cache_lookups = Counter("coderd_cache_lookups", "Result cache look-ups, by result (hit, miss)", ["result"],
                        registry=REGISTRY)
cache_evictions = Counter("coderd_cache_evictions", "Result cache entries evicted (least recently used)",
                          registry=REGISTRY)
cache_size = Gauge("coderd_cache_entries", "Entries in the result cache", registry=REGISTRY)
quota_pace = Gauge("coderd_quota_pace_calls_per_hour", "The even pace: calls an hour that spend what is left "
                   "of today's quota by 00:00 UTC", registry=REGISTRY)
quota_even_remaining = Gauge("coderd_quota_even_pace_remaining", "Calls that would be left now had the day's "
                             "quota been spent evenly since 00:00 UTC (the burn-down chart's line)",
                             registry=REGISTRY)
quota_burst_tokens = Gauge("coderd_quota_burst_tokens", "Calls that may go now ahead of the even pace",
                           registry=REGISTRY)
pacing_wait = Gauge("coderd_pacing_wait_seconds", "Seconds the next partial call waits for the day's budget "
                    "(0: none)", registry=REGISTRY)
task_crashes = Counter("coderd_task_crashes", "Crashes of supervised tasks (each one is restarted), by task",
                       ["task"], registry=REGISTRY)
replica_active = Gauge("coderd_replica_active", "1 while this replica holds the lease and acts (consumes "
                       "requests, runs batch jobs), 0 as a standby", registry=REGISTRY)
takeovers = Counter("coderd_takeovers", "Times this process became the active replica (took the lease)",
                    registry=REGISTRY)

CONSUMER_STATES = ("active", "standby", "paused", "stopped")


class RecentCalls:
    """Coding calls and records in the last minute, for `coderd status`."""

    def __init__(self) -> None:
        self._calls: deque[tuple[float, int]] = deque()

    def add(self, record_count: int) -> None:
        self._calls.append((time.monotonic(), record_count))

    def last_minute(self) -> tuple[int, int]:
        horizon = time.monotonic() - 60
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()
        return len(self._calls), sum(n for _, n in self._calls)


recent_calls = RecentCalls()


def observe_call(sent: int, served: int) -> None:
    """A coding call that sent `sent` distinct texts for `served` records."""
    from . import history  # the console's charts (history.py imports nothing of ours)

    coding_calls.inc()
    records_per_call.observe(sent)
    recent_calls.add(sent)
    history.record_call(sent)
    records_deduplicated.inc(served - sent)


RECENT_LATENCIES = 1000  # per lane, for the p50/p99 of /readyz and the console
recent_latency: dict[str, deque[float]] = {}


def latency_quantiles(lane: str) -> tuple[float | None, float | None]:
    """The p50 and p99 of the lane's last RECENT_LATENCIES replies (seconds)."""
    seen = sorted(recent_latency.get(lane, ()))
    if not seen:
        return None, None
    return round(seen[len(seen) // 2], 3), round(seen[min(len(seen) - 1, int(len(seen) * 0.99))], 3)


def observe_reply(reply: dict, seconds: float, lane: str = "bulk") -> None:
    """Count a reply once it is confirmed: the request, its records, its latency."""
    route = reply.get("route") or "none"
    error = (reply.get("error") or {}).get("code") or ""
    requests.labels(route, reply["status"], error).inc()
    results = reply.get("records") or ([reply["record"]] if reply.get("record") else [])
    for result in results:
        records.labels(route, result["codeStatus"]).inc()
    summary = reply.get("output") or {}
    for outcome in ("successful", "unsuccessful", "invalid"):
        if summary.get(outcome):
            records.labels(route, outcome).inc(summary[outcome])
    reply_latency.labels(route, lane).observe(seconds)
    recent_latency.setdefault(lane, deque(maxlen=RECENT_LATENCIES)).append(seconds)


def set_consumer_state(state: str) -> None:
    for name in CONSUMER_STATES:
        consumer_state.labels(name).set(1 if name == state else 0)
