"""What the core sees of a request message, and what it tells the broker edge to do with it.

The core never touches a broker object: the edge turns a delivery into an `Incoming`, and
settles the delivery by the `AckPolicy` the core returns.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplyAddress:
    """Where a request's reply goes: `reply_to` (None: the default reply queue), and the
    `correlation_id` it carries."""

    correlation_id: str
    reply_to: str | None


@dataclass
class Incoming:
    body: bytes
    address: ReplyAddress
    lane: str = "bulk"
    producer: str | None = None  # app_id or user_id, where the producer gives one
    content_encoding: str | None = None
    received: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.received

    @functools.cached_property
    def identity(self) -> str:
        """Which request this is, whichever delivery of it: its correlation_id and body."""
        digest = hashlib.sha256(self.address.correlation_id.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
        digest.update(self.body)
        return digest.hexdigest()[:32]


class AckPolicy(enum.Enum):
    """How a request message is settled once the core is done with it."""

    ACK = "ack"
    """Answered: its reply is confirmed by the broker, or its batch job is journaled."""

    HAND_BACK = "hand_back"
    """Not done, to be done later (quota used up, shutting down): republished to the tail
    of its queue, confirmed, then acked. Does not count towards the delivery limit."""

    NACK = "nack"
    """Something unexpected went wrong: requeued by the broker, which counts the delivery
    and dead-letters the message at the delivery limit, so a poison message cannot loop."""
