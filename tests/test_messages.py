"""Validating request messages, and the reply shapes."""

import json

import pytest

from daemon.request.cleaning import clean
from daemon.request.messages import InvalidMessage, Reply, parse_request
from daemon.request.results import completed_reply, failed_reply, invalid_result, sync_result
from daemon.request.routing import Refusal, choose_route


def body(**fields):
    return json.dumps(fields).encode()


def test_a_valid_request():
    request = parse_request(body(topic="osca", records=[{"occp_text": "chef"}], numberOfSuggestions=0))
    assert request.topic == "osca" and request.mode == "auto" and request.raw_records == [{"occp_text": "chef"}]


@pytest.mark.parametrize("raw", [
    b"not json", b"[1, 2]", b'"a string"',
    body(record={"occp_text": "chef"}),
    body(topic="osca"),
    body(topic="osca", record={"occp_text": "chef"}, records=[{"occp_text": "chef"}]),
    body(topic="osca", records=[]),
    body(topic="osca", record={"occp_text": "chef"}, numberOfSuggestions=17),
    body(topic="osca", record={"occp_text": "chef"}, numberOfSuggestions=-1),
    body(topic="osca", record={"occp_text": "chef"}, numberOfSuggestions="3"),
    body(topic="osca", record={"occp_text": "chef"}, mode="fast"),
    body(topic="", record={"occp_text": "chef"}),
])
def test_invalid_messages(raw):
    with pytest.raises(InvalidMessage) as caught:
        parse_request(raw)
    assert str(caught.value)


def test_routing_rule():
    short, long_ = clean("chef", ""), clean("x" * 150, "")
    assert choose_route("auto", "public", 3000, 5000, short.length) == "sync"
    assert choose_route("auto", "partner", 3000, 3000, short.length) == "sync"
    assert choose_route("auto", "partner", 3000, 3001, short.length) == "batch"
    assert choose_route("auto", "partner", 3000, 2, long_.length) == "batch"
    assert choose_route("auto", "public", 3000, 2, long_.length) == "sync"
    assert choose_route("sync", "partner", 3000, 5000, short.length) == "sync"
    assert choose_route("batch", "partner", 3000, 1, short.length) == "batch"
    refused = choose_route("batch", "public", 3000, 1, short.length)
    assert isinstance(refused, Refusal) and refused.code == "not_supported"


def test_record_results_match_the_schema():
    raw = {"recordId": "r1", "occp_text": "software developer", "tasks_text": "writing code"}
    codes = [{"codeCategory": "261313", "codeLabel": "Software Engineer", "codeConfidence": 0.6}]
    ok = sync_result(raw, {"codeStatus": "successful", "result": codes})
    assert ok["result"] == codes and ok["suggestions"] == [] and ok["recordId"] == "r1"
    not_ok = sync_result(raw, {"codeStatus": "unsuccessful", "result": codes})
    assert not_ok["result"] == [] and not_ok["suggestions"] == codes
    bad = invalid_result({"occp_text": "é"}, "too short")
    assert bad["codeStatus"] == "invalid" and bad["input"] == {"occp_text": "é", "tasks_text": ""}
    request = parse_request(body(topic="anzsco", records=[raw, {"occp_text": "é"}]))
    reply = completed_reply(request, "m1", "sync", [ok, bad])
    assert Reply.model_validate(reply).records[1].codeStatus == "invalid"
    failed = failed_reply("anzsco", None, None, "unknown_topic", "no such topic")
    assert Reply.model_validate(failed).error.code == "unknown_topic"
