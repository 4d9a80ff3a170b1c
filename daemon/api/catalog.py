"""What the coding API offers: its topics (the list fetched at most hourly, one call),
each topic's latest model (resolved once, re-checked at most hourly), and topic/model
mistakes remembered, so that a wrong request costs no call, or at most one an hour."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import quote

from ..logs import get_logger
from ..request.results import Refusal
from .client import ApiCaller, ApiError

RECHECK_SECONDS = 3600.0
TOPICS_RETRY_SECONDS = 300.0  # after the topic list could not be had: ask again this much later
MODEL_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a uriName: one plain path segment

log = get_logger("coderd.catalog")


def refusal_for(error: ApiError) -> Refusal | None:
    """The lasting refusal an API error means for its topic/model, or None if transient."""
    text = error.message.lower()
    if error.status == 404 and "topic" in text:
        return Refusal("unknown_topic", error.message)
    if error.status == 404 and "model" in text:
        return Refusal("unknown_model", error.message)
    if error.status == 409:
        return Refusal("model_topic_mismatch", error.message)
    if error.status == 500 and "no models found" in text:
        return Refusal("unknown_model", error.message)
    return None


def segment(value: str) -> str:
    """A URL path segment: percent-encoded, and never `.` or `..` (which a URL library
    would resolve into another path, with coderd's token on it)."""
    if value in (".", ".."):
        raise ValueError(f"{value!r} cannot be a path segment")
    return quote(value, safe="")


def shape_refusal(topic: str, model: str | None) -> Refusal | None:
    """What is wrong with a topic or model id before the API is asked: nothing goes out
    for a name that cannot be one."""
    if not TOPIC_NAME.fullmatch(topic):
        return Refusal("unknown_topic", f"{topic[:80]!r} is not a topic name (letters, digits, - and _)")
    if model is not None and not MODEL_ID.fullmatch(model):
        return Refusal("unknown_model", f"{model[:80]!r} is not a model id (a GUID such as "
                                        "00000000-0000-0000-0000-000000000002)")
    return None


class ModelCatalog:
    def __init__(self, caller: ApiCaller, *, clock=time.monotonic) -> None:
        self.caller, self.clock = caller, clock
        self._latest: dict[str, tuple[str, float]] = {}
        self._refusals: dict[tuple[str, str | None], tuple[Refusal, float]] = {}
        self._resolving: dict[str, asyncio.Task] = {}
        self._topics: tuple[frozenset[str], float] | None = None
        self._topics_failed_at: float | None = None
        self._fetching_topics: asyncio.Task | None = None

    async def check(self, topic: str, model: str | None) -> Refusal | None:
        """Why a request for `topic`/`model` would fail, known without a coding call:
        a bad shape, a remembered refusal, or a topic the API does not list."""
        refusal = shape_refusal(topic, model) or self.refusal(topic, model) or self.refusal(topic, None)
        if refusal is not None:
            return refusal
        topics = await self.topics()
        if topics is not None and topic not in topics:
            listed = ", ".join(sorted(topics)) or "none"
            return Refusal("unknown_topic", f"the coding API has no topic {topic!r} (its topics: {listed})")
        return None

    async def topics(self) -> frozenset[str] | None:
        """The API's topic names, or None when the list cannot be had now (then the
        coding call itself finds out)."""
        now = self.clock()
        if self._topics is not None and now - self._topics[1] <= RECHECK_SECONDS:
            return self._topics[0]
        if self._topics_failed_at is not None and now - self._topics_failed_at < TOPICS_RETRY_SECONDS:
            return self._topics[0] if self._topics else None
        if self._fetching_topics is None:
            self._fetching_topics = asyncio.get_running_loop().create_task(self._fetch_topics())
            self._fetching_topics.add_done_callback(lambda _t: setattr(self, "_fetching_topics", None))
        return await asyncio.shield(self._fetching_topics)

    async def _fetch_topics(self) -> frozenset[str] | None:
        try:
            answer = await self.caller.call("GET", "/topics")
            names = frozenset(t["uriName"] for t in answer if isinstance(t, dict) and isinstance(t.get("uriName"), str))
        except Exception as exc:  # noqa: BLE001 - no list: each topic is tried on its own, as before
            self._topics_failed_at = self.clock()
            log.warning("topic_list_unavailable", error=f"{type(exc).__name__}: {exc}")
            return self._topics[0] if self._topics else None
        self._topics, self._topics_failed_at = (names, self.clock()), None
        return names

    def latest(self, topic: str) -> str | None:
        """The latest model as last resolved; starts a background re-check when stale."""
        entry = self._latest.get(topic)
        if entry is None:
            return None
        if self.clock() - entry[1] > RECHECK_SECONDS and topic not in self._resolving:
            self._start_resolve(topic)
        return entry[0]

    def refusal(self, topic: str, model: str | None) -> Refusal | None:
        entry = self._refusals.get((topic, model))
        if entry is None or self.clock() - entry[1] > RECHECK_SECONDS:
            return None
        return entry[0]

    def remember(self, topic: str, model: str | None, refusal: Refusal) -> None:
        self._refusals[(topic, model)] = (refusal, self.clock())

    async def resolve(self, topic: str) -> str:
        """Ask the API for the topic's latest model (one call, however many wait)."""
        task = self._resolving.get(topic) or self._start_resolve(topic)
        return await asyncio.shield(task)

    def _start_resolve(self, topic: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._fetch_latest(topic))
        self._resolving[topic] = task
        task.add_done_callback(lambda t: self._finished(topic, t))
        return task

    def _finished(self, topic: str, task: asyncio.Task) -> None:
        self._resolving.pop(topic, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the waiters see it through resolve()

    async def _fetch_latest(self, topic: str) -> str:
        try:
            model = await self.caller.call("GET", f"/topics/{segment(topic)}/models/latest")
        except ApiError as error:
            refusal = refusal_for(error)
            if refusal is not None:
                self.remember(topic, None, refusal)
            raise
        model_id = model["modelId"]
        self._latest[topic] = (model_id, self.clock())
        return model_id
