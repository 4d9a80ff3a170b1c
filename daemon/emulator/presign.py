"""Presigned-style URLs for the emulator's stand-in object store.

A URL carries its own date, lifetime and an HMAC over both and its path, as S3's
presigned URLs do, so it works without a token and stops working when it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from yarl import URL


class Signer:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _signature(self, method: str, path: str, date: int, expires: int) -> str:
        message = f"{method}\n{path}\n{date}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, base: URL, method: str, path: str, now: float, lifetime: float) -> str:
        date, expires = int(now), int(lifetime)
        query = urlencode({
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Date": date,
            "X-Amz-Expires": expires,
            "X-Amz-Signature": self._signature(method, path, date, expires),
        })
        return str(base.with_path(path)) + "?" + query

    def check(self, method: str, path: str, query, now: float) -> str | None:
        """None when the URL is valid now, else S3's error code for it."""
        try:
            date, expires = int(query["X-Amz-Date"]), int(query["X-Amz-Expires"])
            signature = query["X-Amz-Signature"]
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError"
        if not hmac.compare_digest(signature, self._signature(method, path, date, expires)):
            return "SignatureDoesNotMatch"
        if now > date + expires:
            return "ExpiredToken"
        return None
