"""`coderd status`: one screen from the running daemon's /readyz."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="TOML file (default: config/coderd.toml when present)")
    parser.add_argument("--json", action="store_true", help="print /readyz as JSON")


def render(address: str, state: dict) -> str:
    token, quota, minute = state["token"], state["quota"], state["last_minute"]
    age = "none yet" if token["age_seconds"] is None else f"{token['age_seconds']:.0f} s old"
    jobs = ", ".join(f"{phase} {n}" for phase, n in sorted(state["batch_jobs"].items())) or "none"
    depth = "unknown" if state["queue_depth"] < 0 else str(state["queue_depth"])
    api = state.get("coding_api") or {}  # absent from an older daemon's answer
    lines = [f"coderd at {address}: {'ready' if state['ready'] else 'NOT READY'}"]
    if api.get("builtin_emulator"):
        lines += ["  !!! CODING THROUGH CODERD'S BUILT-IN EMULATOR, NOT THE REAL ABS SERVICE: api_url is not set",
                  f"  coding API    built-in emulator at {api.get('url')}"]
    elif api:
        lines.append(f"  coding API    {api.get('url')}")
    lines += [
        f"  broker        {state['broker']}",
        f"  consumer      {state['consumer']}",
        *_replica(state.get("replica")),
        f"  token         {age}, {token['requests']} token request(s) by this process",
        f"  quota today   {quota['used']} used, {quota['remaining']} left of {quota['daily_quota']}",
        *_pacing(quota),
        *_cache(state.get("cache")),
        f"  last minute   {minute['calls']} coding calls, {minute['records']} records",
        f"  queue depth   {depth}",
        *_lanes(state.get("lanes") or {}),
        f"  batch jobs    {jobs}",
    ]
    down = {name: task for name, task in state.get("tasks", {}).items() if task["state"] != "running"}
    lines.append("  tasks         " + (", ".join(f"{name} {task['state']}" for name, task in sorted(down.items()))
                                      or "all running"))
    lines += [f"  why not ready: {reason}" for reason in state["reasons"]]
    return "\n".join(lines)


def _replica(replica: dict | None) -> list[str]:
    """Active (since when) or standby; how often this process took the lease over."""
    if not replica:  # an older daemon
        return []
    count = replica.get("takeovers") or 0
    taken = f"{count} takeover{'' if count == 1 else 's'}"
    if replica.get("role") != "active":
        before = f" (was active before: {taken})" if count else ""
        return [f"  replica       standby: another replica holds the lease{before}"]
    since = replica.get("active_since")
    if since is None:
        return ["  replica       active"]
    when = datetime.fromtimestamp(since, timezone.utc)
    shown = when.strftime("%H:%M:%S" if when.date() == datetime.now(timezone.utc).date() else "%Y-%m-%d %H:%M:%S")
    return [f"  replica       active since {shown} UTC ({taken})"]


def _lanes(lanes: dict) -> list[str]:
    def seconds(value):
        return "-" if value is None else f"{value:g} s"

    return [f"  {lane + ' lane':<14}{figures['queue_depth'] if figures['queue_depth'] >= 0 else 'unknown'} queued, "
            f"{figures['waiting_records']} records waiting; reply p50 {seconds(figures['p50_seconds'])}, "
            f"p99 {seconds(figures['p99_seconds'])}" for lane, figures in lanes.items()]


def _pacing(quota: dict) -> list[str]:
    if "pace_calls_per_hour" not in quota:  # an older daemon
        return []
    if quota.get("pacing") is False:
        return [f"  pacing        off (quota_burst = 1); {quota['waiting_records']} records waiting"]
    wait = quota["pacing_wait_seconds"]
    return [f"  pacing        even pace {quota['pace_calls_per_hour']:g} calls/h "
            f"(the even line is at {quota['even_pace_remaining']:g} left), "
            f"{quota['tokens']:g} of {quota['burst']:g} burst calls in hand; "
            + (f"the next partial call waits {wait:g} s" if wait else "no call waits for the budget")
            + f", {quota['waiting_records']} records waiting"]


def _cache(cache: dict | None) -> list[str]:
    if not cache:
        return ["  result cache  off"]
    rate = "no look-ups yet" if cache["hit_rate"] is None else f"{cache['hit_rate']:.0%} hits"
    return [f"  result cache  {cache['entries']} entries (at most {cache['max_entries']}), {rate} "
            f"({cache['hits']} hits, {cache['misses']} misses)"]


def status_main(args: argparse.Namespace) -> int:
    from ..config import settings_for_command

    settings = settings_for_command(args.config, credentials_required=False)
    host, port = settings.http_host_port
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    address = f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=5) as response:
            state = json.load(response)
    except urllib.error.HTTPError as exc:  # 503: not ready, still a full answer
        state = json.load(exc)
    except (urllib.error.URLError, OSError) as exc:
        print(f"coderd is not running: no answer on {address} ({getattr(exc, 'reason', exc)})")
        return 1
    print(json.dumps(state, indent=2) if args.json else render(address, state))
    return 0 if state["ready"] else 3
