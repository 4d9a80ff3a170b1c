"""Which model codes a topic: the latest as last resolved (re-checked at most hourly),
and topic/model mistakes remembered so they never cost another call."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from ..request.results import Refusal
from .client import ApiCaller, ApiError

RECHECK_SECONDS = 3600.0


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


class ModelCatalog:
    def __init__(self, caller: ApiCaller, *, clock=time.monotonic) -> None:
        self.caller, self.clock = caller, clock
        self._latest: dict[str, tuple[str, float]] = {}
        self._refusals: dict[tuple[str, str | None], tuple[Refusal, float]] = {}
        self._resolving: dict[str, asyncio.Task] = {}

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
            model = await self.caller.call("GET", f"/topics/{quote(topic, safe='')}/models/latest")
        except ApiError as error:
            refusal = refusal_for(error)
            if refusal is not None:
                self.remember(topic, None, refusal)
            raise
        model_id = model["modelId"]
        self._latest[topic] = (model_id, self.clock())
        return model_id
