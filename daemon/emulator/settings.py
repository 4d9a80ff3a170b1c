"""What the emulator is told: credentials, limits, timings and fault switches."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_CLIENT_ID = "client1"
DEFAULT_CLIENT_SECRET = "secret123"  # the user guide's own example credentials

DAILY_QUOTA_BY_TIER = {"public": 1000, "partner": 10000}


@dataclass(frozen=True)
class Client:
    secret: str
    tier: str = "partner"  # "public" clients cannot use the batch service


class Clock:
    """Wall-clock time plus an offset that tests move forward.

    Time keeps flowing, so throttling still behaves, while quotas, token expiry,
    URL expiry and batch timings can be jumped over in one call.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Faults:
    """Switches for tests; each can also be set over HTTP at /_emulator/faults."""

    latency: float = 1.0  # seconds added to every /v1 call, as the guide states
    error_rate: float = 0.0  # fraction of /v1 calls answered 500
    force_429: int = 0  # the next N /v1 calls are answered 429 Too Many Requests
    stall: int = 0  # the next N /v1 calls hang for stall_seconds without answering
    stall_seconds: float = 3600.0
    batch_fail: str | None = None  # the next batch operation fails with this error
    lose_uploads: int = 0  # the next N uploads are answered 200 but never arrive
    expired_urls: int = 0  # the next N download URLs are issued already expired
    transfer_delay: float = 0.0  # seconds before a presigned upload or download is served
    reject_text: str | None = None  # a coding call with a record containing this is refused whole (400)
    token_outage: bool = False  # the token endpoint answers 503, as if it were down

    def update(self, changes: dict) -> None:
        known = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise KeyError(key)
            setattr(self, key, value)


@dataclass
class EmulatorConfig:
    clients: dict[str, Client] = field(
        default_factory=lambda: {DEFAULT_CLIENT_ID: Client(DEFAULT_CLIENT_SECRET)}
    )
    requests_per_second: float = 1.0  # per client, over all /v1 calls; 0 disables
    daily_quota: dict[str, int] = field(default_factory=lambda: dict(DAILY_QUOTA_BY_TIER))
    token_ttl: float = 3600.0
    token_requests_per_hour: int = 5  # more than this from one client and it is blocked
    token_block_seconds: float = 900.0
    upload_timeout: float = 3600.0  # an operation with no upload by then is timed_out
    processing_seconds: float = 60.0  # least time an uploaded operation stays in_progress
    url_ttl: float = 3600.0  # presigned download URLs
    output_retention: float = 86400.0  # output files are deleted this long after completion
    max_upload_bytes: int = 5 * 1024**3
    storage_dir: Path | None = None  # None: a temporary directory
    seed: int = 0  # for the error_rate dice
    faults: Faults = field(default_factory=Faults)
