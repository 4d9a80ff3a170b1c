"""Real-time coding: shapes as the guide shows them, and every whole-request error."""

import pytest

GUIDE_RECORD = {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}
OUTSIDE = "There are record(s) outside the min or max char limit: "


async def test_single_record_guide_example(api):
    status, body = await api.call("POST", "/v1/topics/anzsco/code",
                                  json={"record": GUIDE_RECORD, "numberOfSuggestions": 3})
    assert status == 200
    assert body["codeStatus"] == "successful"
    assert body["input"] == GUIDE_RECORD
    assert "recordId" not in body
    assert body["result"][0]["codeCategory"] == "261313"
    assert body["result"][0]["codeLabel"] == "Software Engineer"
    assert 0 < body["result"][0]["codeConfidence"] <= 1
    assert 1 <= len(body["result"]) <= 3


async def test_small_batch_keeps_order_and_echoes_record_ids(api):
    records = [GUIDE_RECORD, {"occp_text": "Paramedic, respond to emergencies"},
               {"recordId": "1", "occp_text": "Sales assistant"}]
    status, body = await api.call("POST", "/v1/topics/anzsco/code", json={"records": records, "numberOfSuggestions": 3})
    assert status == 200 and isinstance(body, list) and len(body) == 3
    assert [b["input"] for b in body] == [{k: v for k, v in r.items() if k != "recordId"} for r in records]
    assert "recordId" not in body[0] and "recordId" not in body[1]
    assert body[2]["recordId"] == "1"
    assert all(b["codeStatus"] in ("successful", "unsuccessful") for b in body)


async def test_specific_model_endpoint(api):
    status, body = await api.call("POST", "/v1/topics/anzsco/models/00000000-0000-0000-0000-000000000003/code",
                                  json={"record": GUIDE_RECORD})
    assert status == 200 and body["result"][0]["codeCategory"] == "261313"


async def test_number_of_suggestions_bounds_the_result(api):
    status, body = await api.call("POST", "/v1/topics/anzsco/code",
                                  json={"record": {"occp_text": "qwzx vbnm plork"}, "numberOfSuggestions": 16})
    assert status == 200 and len(body["result"]) <= 16
    status, body = await api.call("POST", "/v1/topics/anzsco/code",
                                  json={"record": GUIDE_RECORD, "numberOfSuggestions": 1})
    assert len(body["result"]) == 1


@pytest.mark.parametrize("body, message", [
    ({"record": GUIDE_RECORD, "numberOfSuggestions": 17}, "Invalid request body"),
    ({"record": GUIDE_RECORD, "numberOfSuggestions": "3"}, "Invalid request body"),
    ({"numberOfSuggestions": 3}, "Invalid request body"),
    ({"records": []}, "Batch input contained no records"),
    ({"records": [GUIDE_RECORD] * 301}, "Batch records exceeds length limit of 300"),
    ({"records": [GUIDE_RECORD, "chef"]}, "Malformed record found in request"),
    ({"records": [GUIDE_RECORD, {"occp_text": 7}]}, "Malformed record found in request"),
    ({"records": [GUIDE_RECORD, {"job": "chef"}]}, "Malformed record found in request"),
    ({"record": {"occp_text": "café owner"}}, "Invalid request body"),
    ({"record": {"occp_text": "chef\x08"}}, "Invalid request body"),
])
async def test_whole_request_fails_with_the_guides_message(api, emulator, body, message):
    status, answer = await api.call("POST", "/v1/topics/anzsco/code", json=body)
    assert (status, answer) == (400, {"message": message})
    assert emulator.stats.records_coded == 0


async def test_length_errors_name_the_offending_indexes(api, emulator):
    records = [GUIDE_RECORD, {"occp_text": "ab"}, {"occp_text": "x" * 60, "tasks_text": "y" * 41}, GUIDE_RECORD]
    status, body = await api.call("POST", "/v1/topics/osca/code", json={"records": records})
    assert status == 400
    assert body["message"] == (OUTSIDE + "Record with index 1 has a total text length under 3 min, "
                               "Record with index 2 has a total text length over 100 max")
    assert emulator.stats.records_coded == 0


async def test_body_that_is_not_json(api):
    status, body = await api.call("POST", "/v1/topics/osca/code", data=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert (status, body) == (400, {"message": "Invalid request body"})
