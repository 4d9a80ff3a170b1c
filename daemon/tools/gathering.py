"""`coderd topics` and `coderd models TOPIC`: the coding API's "gathering parameters" calls,
made the way the daemon makes them: its token cache and quota ledger in state_dir, its
limiter. With no api_url configured there is no API to ask: an in-process emulator answers."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

THROTTLE_RETRIES = 3  # a running daemon may have called just before us: the API answers 429


def add_topics_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="TOML file (default: config/coderd.toml when present)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def add_models_arguments(parser) -> None:
    parser.add_argument("topic", help="the topic's uriName, e.g. anzsco or osca")
    add_topics_arguments(parser)


def topics_main(args) -> int:
    return _main(args, "topics", None)


def models_main(args) -> int:
    return _main(args, "models", args.topic)


def _main(args, command: str, topic: str | None) -> int:
    from ..api.client import ApiError, QuotaExhausted
    from ..config import settings_for_command
    from ..logs import configure_logging
    settings = settings_for_command(args.config)
    configure_logging(settings.log_format, level="warning")  # logs go to stderr; stdout is the answer
    try:
        return asyncio.run(_run(settings, command, topic, args.json))
    except Exception as exc:  # one line, never a traceback (ApiError, TokenUnavailable, QuotaExhausted...)
        if isinstance(exc, QuotaExhausted):
            message = "today's quota of API calls is used up (quota.json in state_dir); it resets at 00:00 UTC"
        elif isinstance(exc, ApiError):
            message = f"{f'topic {topic!r}: ' if topic else ''}{exc.message} (HTTP {exc.status or 'no answer'})"
        else:
            message = f"{type(exc).__name__}: {exc}"
        print(f"coderd {command}: {' '.join(message.split())}", file=sys.stderr)
        return 1


async def _run(settings, command: str, topic: str | None, as_json: bool) -> int:
    import aiohttp

    from ..api.client import ApiCaller, ApiError, call_tracing
    from ..api.limiter import CallLimiter
    from ..api.quota import QuotaLedger
    from ..api.token import TokenProvider
    emulator = scratch = None
    if settings.uses_emulator:
        from ..emulator import EmulatorConfig, EmulatorServer, Faults
        from ..emulator.settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
        print("coderd: no api_url is configured, so there is no coding API to ask: this answer comes from "
              "coderd's BUILT-IN EMULATOR, not the real ABS service", file=sys.stderr)
        emulator = await EmulatorServer(EmulatorConfig(faults=Faults(latency=0))).start()
        scratch = tempfile.TemporaryDirectory(prefix="coderd-gathering-")  # the daemon's state is left alone
        api_url = auth_url = emulator.url
        client_id, secret, state_dir = DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Path(scratch.name)
    else:
        api_url, auth_url, client_id = settings.api_url, settings.auth_url, settings.client_id
        secret, state_dir = settings.client_secret.get_secret_value(), settings.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        async with aiohttp.ClientSession(trace_configs=[call_tracing()]) as session:
            limiter = CallLimiter(settings.requests_per_second)
            if emulator is None:
                limiter.guard()  # another process (the daemon, a previous command) may have just called
            caller = ApiCaller(session, api_url, TokenProvider(session, auth_url, client_id, secret, state_dir),
                               limiter, QuotaLedger(state_dir, settings.daily_quota))

            async def get(path: str):
                for attempt in range(THROTTLE_RETRIES + 1):
                    try:
                        return await caller.call("GET", path)
                    except ApiError as exc:
                        if not exc.throttled or attempt == THROTTLE_RETRIES:
                            raise
                        limiter.penalize(limiter.interval * (attempt + 1))

            if command == "topics":
                answer = await get("/topics")
                rows = [("uriName", "fullName")] + [(t.get("uriName"), t.get("fullName")) for t in answer]
            else:
                answer = await get(f"/topics/{quote(topic, safe='')}/models")
                latest = {} if as_json else await get(f"/topics/{quote(topic, safe='')}/models/latest")
                rows = [("modelId", "version", "released", "latest")] + [
                    (m.get("modelId"), m.get("modelVersion"), m.get("modelReleaseDate"),
                     "latest" if m.get("modelId") == latest.get("modelId") else "") for m in answer]
    finally:
        if emulator is not None:
            await emulator.stop()
            scratch.cleanup()
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
