"""The coding API's /v1 edge: every call takes a token, a limiter slot and a quota count.

Thin on purpose: it sends, classifies the answer, and leaves what to do about it to
the caller.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from .limiter import CallLimiter
from .quota import QuotaLedger
from .token import TokenProvider

# The API answers in about a second; a call this late is treated as lost and retried.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=10)


def call_tracing() -> aiohttp.TraceConfig:
    """Tells a call's limiter the moment its request is on the wire.

    aiohttp reports the headers before it writes them: it holds them back to go out
    with the body, which a separate task writes, maybe a busy loop turn later. So the
    body's report stamps the call too; the limiter keeps the latest stamp.
    """

    async def on_wire(_session, context, _params) -> None:
        on_sent = (context.trace_request_ctx or {}).get("on_sent")
        if on_sent is not None:
            on_sent()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_wire)  # a call without a body goes out here
    tracing.on_request_chunk_sent.append(on_wire)
    return tracing


def _not_json(name: str):
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(text: str):
    """JSON as RFC 8259 has it: NaN or Infinity in an answer is a broken answer (retried),
    never something a reply could carry on."""
    return json.loads(text, parse_constant=_not_json)


class ApiError(Exception):
    """The API (or the way to it) failed a call."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status, self.message = status, message

    @property
    def quota_exhausted(self) -> bool:
        return self.status == 429 and "limit exceeded" in self.message.lower()

    @property
    def throttled(self) -> bool:
        return self.status == 429 and not self.quota_exhausted

    @property
    def transient(self) -> bool:
        """Worth retrying: throttled, a server error, no answer, or a token refused."""
        return self.status is None or self.status >= 500 or self.throttled or self.status == 403


class QuotaExhausted(Exception):
    """Today's calls are used up; nothing was sent."""


class ApiCaller:
    def __init__(self, session: aiohttp.ClientSession, api_url: str, tokens: TokenProvider,
                 limiter: CallLimiter, ledger: QuotaLedger) -> None:
        self.session, self.api_url = session, api_url.rstrip("/")
        self.tokens, self.limiter, self.ledger = tokens, limiter, ledger

    async def reserve(self) -> str:
        """Wait for the next call slot; returns the token to send with it.

        The token is obtained before the slot, so a token fetch never delays a call.
        """
        if self.ledger.exhausted:
            raise QuotaExhausted()
        token = await self.tokens.get()
        await self.limiter.acquire()
        return token

    async def send(self, token: str, method: str, path: str, body: Any = None) -> Any:
        """Send one /v1 call in a reserved slot; the JSON answer, or ApiError."""
        self.ledger.count()
        try:
            async with self.session.request(
                method, f"{self.api_url}/v1{path}", json=body, timeout=CALL_TIMEOUT,
                headers={"Authorization": token},  # the raw token, as the API expects
                trace_request_ctx={"on_sent": self.limiter.started},
            ) as response:
                status = response.status
                answer = await response.json(content_type=None, loads=strict_loads)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ApiError(None, f"{type(exc).__name__} {exc}".strip()) from None
        if status == 200:
            return answer
        message = ""
        if isinstance(answer, dict):
            message = str(answer.get("message") or answer.get("Message") or "")
        if status == 403:
            self.tokens.invalidate(token)
        error = ApiError(status, message or f"HTTP {status}")
        if error.quota_exhausted:  # whatever we counted, the API says today is used up
            self.ledger.mark_exhausted()
        raise error

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await self.send(await self.reserve(), method, path, body)

