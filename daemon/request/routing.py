"""Which API path codes a request: the throttled real-time worker or the batch service.

A plain rule, documented in the README:
- `mode: sync` always goes to the real-time worker;
- `mode: batch` goes to the batch service, which only the partner tier has;
- `mode: auto` goes to batch when the tier is partner and the request has more than
  `batch_threshold` records or a record too long for real-time (101-300 characters);
  everything else goes to the real-time worker.
"""

from __future__ import annotations

from ..constants import SYNC_MAX_CHARS
from .cleaning import CleanRecord
from .results import Refusal


def longest(records: list[CleanRecord | None]) -> int:
    """The longest cleaned record's length (None: a record already invalid)."""
    return max((r.length for r in records if r is not None), default=0)


def choose_route(mode: str, tier: str, batch_threshold: int, count: int, longest: int) -> str | Refusal:
    """'sync', 'batch', or a Refusal, for `count` records whose longest cleans to `longest`."""
    batch_available = tier == "partner"
    if mode == "sync":
        return "sync"
    if mode == "batch":
        if not batch_available:
            return Refusal("not_supported", "the batch service needs the partner tier; this coderd runs on the public tier")
        return "batch"
    if batch_available and (count > batch_threshold or longest > SYNC_MAX_CHARS):
        return "batch"
    return "sync"
