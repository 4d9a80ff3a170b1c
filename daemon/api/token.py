"""One token for the whole process: fetched when first needed, shared by every caller,
refreshed shortly before it expires (and only then), cached in state_dir for restarts.
The service blocks clients that ask for tokens often, so a refused token is replaced at
most once per `min_refetch_interval` (doubling while replacements keep being refused)
and failed requests back off. The token and secret never reach logs or exceptions."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Callable

import aiohttp
import structlog

from ..backoff import Backoff
from ..durable import write_atomically
from ..logs import register_secret

BLOCKED_BACKOFF = 900.0  # the endpoint answered 403: the service blocks for ~15 minutes
TRANSIENT_BACKOFF = Backoff(base=5.0, cap=60.0, jitter=False)  # 5, 10, 20, 40, 60 s after unanswered requests
MAX_REFETCH_INTERVAL = 3600.0  # the service's own guidance: one token request an hour
DEFAULT_LIFETIME = 3600.0  # if the endpoint leaves out expires_in
TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=30)

log = structlog.get_logger("coderd.token")


def _register_secret(value: str) -> None:
    register_secret(value, rotating=True)  # tokens rotate: only recent ones are kept


class TokenUnavailable(Exception):
    """No token now; `retry_after` is the number of seconds before asking again makes sense."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class TokenProvider:
    def __init__(self, session: aiohttp.ClientSession, auth_url: str, client_id: str, client_secret: str,
                 state_dir: Path, *, clock: Callable[[], float] = time.time,
                 refresh_margin: float = 120.0, min_refetch_interval: float = 300.0) -> None:
        self.session, self.clock = session, clock
        self.auth_url, self.client_id = auth_url.rstrip("/"), client_id
        credentials = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._authorization = f"Basic {credentials}"  # as the guide computes it; never logged
        self.path = Path(state_dir) / "token.json"
        self.refresh_margin, self.min_refetch_interval = refresh_margin, min_refetch_interval
        self.fetches = 0  # token requests made by this process
        self.fetched_at: float | None = None  # when the current token was obtained (clock())
        self.expires_at: float | None = None
        self._token: str | None = None
        self._refused = False  # the API refused the last token: the next fetch is a re-fetch
        self._refetched_at: float | None = None  # when the last re-fetch was made
        self._refetch_streak = 0  # re-fetches in a row whose token was refused again
        self._not_before = 0.0  # a failure's back-off: no request before this
        self._transient_failures, self._last_failure = 0, ""
        self._fetching: asyncio.Task | None = None
        self._load_cache()

    async def get(self) -> str:
        """A valid raw access token; TokenUnavailable if there is none and asking now is not allowed."""
        now = self.clock()
        if self._token is not None and now < self._refresh_due():
            return self._token
        if self._fetching is None and self._token is None:
            self._load_cache()  # a replica sharing state_dir may hold a fresh token
            if self._token is not None and now < self._refresh_due():
                return self._token
        if self._fetching is None:
            wait, reason = self._fetch_not_allowed_for(now)
            if wait > 0:
                if self._still_valid(now):  # refresh is due, but the old token still works
                    return self._token
                raise TokenUnavailable(reason, retry_after=wait)
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
            self._fetching.add_done_callback(self._fetch_done)
        try:  # shielded: one caller giving up does not cancel the request the others await
            return await asyncio.shield(self._fetching)
        except TokenUnavailable:
            if self._still_valid(self.clock()):
                return self._token
            raise

    def obtainable(self) -> tuple[bool, str]:
        """Whether get() would give a token now without waiting out a back-off (for
        readiness: it asks nothing of the token endpoint)."""
        now = self.clock()
        if self._still_valid(now):
            return True, "token cached"
        wait, reason = self._fetch_not_allowed_for(now)
        return (True, "token will be fetched when first needed") if wait <= 0 else (False, reason)

    def invalidate(self, token: str) -> None:
        """The API answered 403 with this token: drop it so the next get() asks again
        (rate-limited). A stale token (already replaced) changes nothing."""
        if token != self._token or token is None:
            return
        log.warning("token_refused", age_seconds=round(self.clock() - (self.fetched_at or self.clock())))
        self._token = self.expires_at = self.fetched_at = None
        self._refused = True
        self._save_cache()

    def _refresh_due(self) -> float:
        # Never refresh earlier than halfway through a token's life: a short-lived token
        # must not turn the margin into a request per call.
        lifetime = self.expires_at - (self.fetched_at or self.expires_at)
        return self.expires_at - min(self.refresh_margin, max(0.0, lifetime) / 2)

    def _still_valid(self, now: float) -> bool:
        return self._token is not None and self.expires_at > now

    def _fetch_not_allowed_for(self, now: float) -> tuple[float, str]:
        """Seconds before a token request is allowed (<= 0: now), and why."""
        if self._not_before > now:
            return self._not_before - now, self._last_failure
        if self._refused and self._refetched_at is not None:
            gap = min(self.min_refetch_interval * 2 ** max(0, self._refetch_streak - 1), MAX_REFETCH_INTERVAL)
            return self._refetched_at + gap - now, "the API refused a fresh token; re-fetches are rate-limited"
        return 0.0, ""

    def _fetch_done(self, task: asyncio.Task) -> None:
        self._fetching = None
        if not task.cancelled():
            task.exception()  # mark retrieved: the awaiting callers have it

    async def _fetch(self) -> str:
        now, refetch = self.clock(), self._refused
        self.fetches += 1
        try:
            async with self.session.post(f"{self.auth_url}/oauth2/token",
                                         headers={"Authorization": self._authorization},
                                         data={"grant_type": "client_credentials"},
                                         timeout=TOKEN_TIMEOUT) as response:
                status = response.status
                body = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise self._failed(now, None, f"no usable answer ({type(exc).__name__})") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            raise self._failed(now, status, f"HTTP {status}")
        _register_secret(token)
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else DEFAULT_LIFETIME
        self._token, self.fetched_at, self.expires_at = token, now, now + lifetime
        # a plain refresh means the last token lived out its life: the refusal streak is over
        self._refetch_streak = self._refetch_streak + 1 if refetch else 0
        self._refetched_at = now if refetch else self._refetched_at
        self._refused, self._not_before, self._transient_failures = False, 0.0, 0
        self._save_cache()
        log.info("token_obtained", expires_in=round(lifetime), refetch=refetch, fetches=self.fetches)
        return token

    def _failed(self, now: float, status: int | None, detail: str) -> TokenUnavailable:
        """Set the back-off for a failed token request; the exception for its callers."""
        if status in (400, 401):  # invalid_client and the like: asking again will not help soon
            backoff, message = self.min_refetch_interval, f"credentials rejected by the token endpoint ({detail})"
        elif status == 403:  # the service blocks clients that ask too often
            backoff, message = BLOCKED_BACKOFF, "token endpoint is blocking this client (HTTP 403)"
        else:
            self._transient_failures += 1
            backoff = TRANSIENT_BACKOFF.delay(self._transient_failures)
            message = f"token endpoint failed: {detail}"
        self._not_before, self._last_failure = now + backoff, message
        if status == 403:
            self._save_cache()  # a restart must honour the block too
        log.error("token_request_failed", status=status, detail=detail, retry_after=backoff)
        return TokenUnavailable(message, retry_after=backoff)

    def _save_cache(self) -> None:
        """token.json, mode 0600: the token, what it belongs to, and the rate-limit state."""
        state = {"auth_url": self.auth_url, "client_id": self.client_id,
                 "access_token": self._token, "expires_at": self.expires_at, "fetched_at": self.fetched_at,
                 "refused": self._refused, "refetched_at": self._refetched_at,
                 "refetch_streak": self._refetch_streak, "not_before": self._not_before}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(state), mode=0o600)
        except OSError as exc:  # the token in memory still works; only a restart loses it
            log.warning("token_cache_not_written", error=type(exc).__name__)

    def _load_cache(self) -> None:
        try:
            cached = json.loads(self.path.read_text())
            if cached["auth_url"] != self.auth_url or cached["client_id"] != self.client_id:
                return  # another service's or client's token: never sent to this one
            now, token, expires_at = self.clock(), cached["access_token"], float(cached["expires_at"] or 0)
            self._refetched_at = float(cached["refetched_at"]) if cached.get("refetched_at") else None
            self._refetch_streak, self._refused = int(cached.get("refetch_streak") or 0), bool(cached.get("refused"))
            # a block from a previous run still holds (bounded, in case the clock jumped)
            self._not_before = min(float(cached.get("not_before") or 0), now + BLOCKED_BACKOFF)
            self._last_failure = "token requests are backing off after a failure in a previous run"
            if isinstance(token, str) and token and expires_at - now > self.refresh_margin:
                _register_secret(token)
                self._token, self.expires_at = token, expires_at
                self.fetched_at = float(cached.get("fetched_at") or now)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # no cache, or an unreadable one: fetch when first needed
