"""Clients, their tokens, and the token endpoint's own abuse limit."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import defaultdict, deque
from dataclasses import dataclass

from .settings import Clock, EmulatorConfig


@dataclass(frozen=True)
class Token:
    client_id: str
    expires_at: float


class Accounts:
    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.tokens: dict[str, Token] = {}
        self.token_requests: dict[str, deque[float]] = defaultdict(deque)
        self.blocked_until: dict[str, float] = {}

    def client_from_basic(self, header: str | None) -> str | None:
        """The client id of a valid `Basic base64(id:secret)` header, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, _, secret = decoded.partition(":")
        client = self.config.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret, secret):
            return None
        return client_id

    def admit_token_request(self, client_id: str) -> bool:
        """Record a token request; False while the client is blocked for asking too often."""
        now = self.clock.now()
        if self.blocked_until.get(client_id, 0.0) > now:
            return False
        window = self.token_requests[client_id]
        window.append(now)
        while window and window[0] <= now - 3600.0:
            window.popleft()
        if len(window) > self.config.token_requests_per_hour:
            self.blocked_until[client_id] = now + self.config.token_block_seconds
            window.clear()
            return False
        return True

    def issue(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = Token(client_id, self.clock.now() + self.config.token_ttl)
        return token

    def client_from_token(self, header: str | None) -> str | None:
        """The guide sends the raw token: a `Bearer ` prefix is not accepted."""
        if not header:
            return None
        token = self.tokens.get(header)
        if token is None or token.expires_at <= self.clock.now():
            return None
        return token.client_id

    def tier(self, client_id: str) -> str:
        return self.config.clients[client_id].tier
