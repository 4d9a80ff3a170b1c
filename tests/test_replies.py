"""Where a reply goes when its queue is missing: rerouted, the default queue declared
again, or dead-lettered with the reason; never dropped, never a reason to code again.
A fake channel stands in for the broker's returns of unroutable messages."""

from __future__ import annotations

import pytest
from aio_pika.exceptions import PublishError

from daemon.broker.replies import REASON_HEADER, UNDELIVERABLE_HEADER, ReplyPublisher


class Returned(PublishError):
    def __init__(self, routing_key: str) -> None:
        Exception.__init__(self, f"returned: no route to {routing_key}")
        self.routing_key = routing_key

    def __str__(self) -> str:
        return f"NO_ROUTE for routing key {self.routing_key!r}"


class FakeLink:
    def __init__(self, queues: set[str], redeclare_works: bool = True) -> None:
        self.queues, self.redeclare_works = queues, redeclare_works
        self.published: list[tuple[str, dict]] = []
        self.reply_channel = self
        self.default_exchange = self

    async def publish(self, message, routing_key: str, mandatory: bool) -> None:
        assert mandatory
        if routing_key not in self.queues:
            raise Returned(routing_key)
        self.published.append((routing_key, dict(message.headers or {})))

    async def declare_default_reply_queue(self) -> None:
        if self.redeclare_works:
            self.queues.add("coding.replies")


@pytest.mark.parametrize("queues, redeclare, lands_in, headers", [
    ({"mine", "coding.replies"}, True, "mine", {}),
    ({"coding.replies"}, True, "coding.replies", {UNDELIVERABLE_HEADER: "mine"}),
    ({"coding.requests.dead"}, True, "coding.replies", {UNDELIVERABLE_HEADER: "mine"}),
    ({"coding.requests.dead"}, False, "coding.requests.dead", {UNDELIVERABLE_HEADER: "mine"}),
])
async def test_a_reply_always_lands_somewhere(queues, redeclare, lands_in, headers):
    link = FakeLink(set(queues), redeclare)
    await ReplyPublisher(link, "coding.replies", "coding.requests").publish(b"{}", "mine", "c1")
    [(queue, sent_headers)] = link.published
    assert queue == lands_in
    assert {k: v for k, v in sent_headers.items() if k != REASON_HEADER} == headers
    assert (REASON_HEADER in sent_headers) == (lands_in == "coding.requests.dead")
