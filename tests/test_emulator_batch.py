"""Asynchronous batch coding: operations, presigned upload/download, and their life cycle."""

import json

from conftest import PUBLIC, ApiClient

from daemon.emulator import Client

KMS = "x-amz-server-side-encryption-aws-kms-key-id"
LINES = [
    {"recordId": "1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    {"recordId": "2", "occp_text": "qwzx vbnm", "tasks_text": "plork"},
    {"occp_text": "Brickie", "tasks_text": ""},
    {"recordId": "4", "occp_text": "x" * 200, "tasks_text": "y" * 101},
]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


async def create(api, path="/v1/topics/anzsco/batch-code"):
    status, body = await api.call("POST", path)
    assert status == 200, body
    assert set(body) == {"requestUploadUrl", "operationId", "bucketKmsKeyArn"}
    return body


async def put(session, op, data: bytes, *, key=None, sse="aws:kms"):
    headers = {"x-amz-server-side-encryption": sse, KMS: key or op["bucketKmsKeyArn"]}
    async with session.put(op["requestUploadUrl"], data=data, headers=headers) as response:
        return response.status, await response.text()


async def status_of(api, op, prefix="/v1/topics/anzsco"):
    status, body = await api.call("GET", f"{prefix}/batch-code/operations/{op['operationId']}")
    assert status == 200, body
    return body


async def fetch(session, url):
    async with session.get(url) as response:
        return response.status, await response.read()


async def test_full_cycle_codes_every_line_in_order(api, emulator, session):
    op = await create(api)
    assert await status_of(api, op) == {"operationStatus": "awaiting_input"}
    body = jsonl(LINES[:2]) + b"this is not a json string\n" + jsonl(LINES[2:])
    assert (await put(session, op, body))[0] == 200
    await emulator.emulator.idle()
    done = await status_of(api, op)
    assert done["operationStatus"] == "complete"
    status, output = await fetch(session, done["responseDownloadUrl"])
    assert status == 200
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert len(lines) == 5
    assert lines[0]["recordId"] == "1" and lines[0]["codeStatus"] == "successful"
    assert lines[0]["result"]["codeCategory"] == "261313"
    assert lines[1]["codeStatus"] == "unsuccessful" and 1 <= len(lines[1]["suggestions"]) <= 3
    assert lines[2] == {"recordId": "unknown", "codeStatus": "unsuccessful",
                        "input": "this is not a json string", "error": "Invalid JSON data format."}
    assert lines[3]["recordId"] is None and lines[3]["input"]["occp_text"] == "Brickie"
    assert lines[4]["recordId"] == "4" and "error" in lines[4]  # over 300 characters
    status, metadata = await fetch(session, done["metadataDownloadUrl"])
    assert status == 200 and json.loads(metadata)["modelId"] == "00000000-0000-0000-0000-000000000002"


async def test_specific_model_and_status_by_either_url(api, emulator, session):
    model = "00000000-0000-0000-0000-000000000003"
    op = await create(api, f"/v1/topics/anzsco/models/{model}/batch-code")
    await put(session, op, jsonl(LINES[:1]))
    await emulator.emulator.idle()
    by_model = await status_of(api, op, f"/v1/topics/anzsco/models/{model}")
    assert by_model["operationStatus"] == "complete"
    _, metadata = await fetch(session, by_model["metadataDownloadUrl"])
    assert json.loads(metadata)["modelId"] == model


async def test_upload_requires_the_kms_headers(api, session):
    op = await create(api)
    status, text = await put(session, op, jsonl(LINES), sse="AES256")
    assert status == 400 and "InvalidArgument" in text
    status, text = await put(session, op, jsonl(LINES), key="arn:aws:kms:other")
    assert status == 403 and "AccessDenied" in text
    assert (await status_of(api, op))["operationStatus"] == "awaiting_input"


async def test_tampered_upload_url_is_refused(api, session):
    op = await create(api)
    op["requestUploadUrl"] = op["requestUploadUrl"].replace("X-Amz-Expires=", "X-Amz-Expires=9")
    status, text = await put(session, op, jsonl(LINES))
    assert status == 403 and "SignatureDoesNotMatch" in text


async def test_in_progress_until_processing_time_has_passed(make_emulator, session):
    server = await make_emulator(processing_seconds=600)
    api = ApiClient(session, server.url)
    await api.fetch_token()
    op = await create(api)
    await put(session, op, jsonl(LINES))
    await server.emulator.idle()
    assert (await status_of(api, op))["operationStatus"] == "in_progress"
    server.clock.advance(600)
    assert (await status_of(api, op))["operationStatus"] == "complete"


async def test_never_uploaded_times_out_and_refuses_late_input(api, emulator, session):
    op = await create(api)
    emulator.clock.advance(emulator.emulator.config.upload_timeout + 1)
    await api.fetch_token()  # the first one has expired by now
    assert await status_of(api, op) == {"operationStatus": "timed_out"}
    status, text = await put(session, op, jsonl(LINES))
    assert status == 403 and "expired" in text


async def test_download_url_expires_and_a_new_status_gives_a_fresh_one(api, emulator, session):
    op = await create(api)
    await put(session, op, jsonl(LINES))
    await emulator.emulator.idle()
    first = (await status_of(api, op))["responseDownloadUrl"]
    emulator.clock.advance(3601)
    await api.fetch_token()
    status, text = await fetch(session, first)
    assert status == 403 and b"Request has expired" in text
    fresh = (await status_of(api, op))["responseDownloadUrl"]
    assert (await fetch(session, fresh))[0] == 200


async def test_output_is_deleted_after_24_hours(api, emulator, session):
    op = await create(api)
    await put(session, op, jsonl(LINES))
    await emulator.emulator.idle()
    await status_of(api, op)
    emulator.clock.advance(86401)
    await api.fetch_token()
    url = (await status_of(api, op))["responseDownloadUrl"]
    status, text = await fetch(session, url)
    assert status == 404 and b"NoSuchKey" in text


async def test_unknown_and_foreign_operations(make_emulator, session):
    server = await make_emulator(clients={"client1": Client("secret123"), "client2": Client("other")})
    owner, stranger = ApiClient(session, server.url), ApiClient(session, server.url)
    await owner.fetch_token()
    await stranger.fetch_token("client2", "other")
    op = await create(owner)
    path = f"/v1/topics/anzsco/batch-code/operations/{op['operationId']}"
    assert await stranger.call("GET", path) == (401, {"message": f"User is not authorised to retrieve operation {op['operationId']}"})
    missing = "/v1/topics/anzsco/batch-code/operations/00000000-0000-0000-0000-00000000dead"
    assert await owner.call("GET", missing) == (404, {"message": "Unable to retrieve operation for given id"})


async def test_public_tier_has_no_batch_service(make_emulator, session):
    server = await make_emulator(clients=PUBLIC)
    api = ApiClient(session, server.url)
    await api.fetch_token()
    status, _ = await api.call("POST", "/v1/topics/anzsco/batch-code")
    assert status == 403


async def test_files_over_the_size_limit_are_refused(make_emulator, session):
    server = await make_emulator(max_upload_bytes=1000)
    api = ApiClient(session, server.url)
    await api.fetch_token()
    op = await create(api)
    status, text = await put(session, op, jsonl(LINES * 20))
    assert status == 400 and "EntityTooLarge" in text
    assert (await status_of(api, op))["operationStatus"] == "awaiting_input"


async def test_failed_operation_reports_its_error(api, emulator, session):
    emulator.faults.batch_fail = "Inference failed: model unavailable"
    op = await create(api)
    await put(session, op, jsonl(LINES))
    await emulator.emulator.idle()
    assert await status_of(api, op) == {"operationStatus": "failed", "error": "Inference failed: model unavailable"}


async def test_upload_streams_past_the_request_size_limit(api, emulator, session):
    """The app buffers at most 1 MiB of a request body: a 24 MiB upload only fits if streamed."""
    # Over-long records are answered without coding, so processing the file stays quick.
    line = json.dumps({"recordId": "r", "occp_text": "truck driver", "tasks_text": "x" * 400}) + "\n"
    count = (24 << 20) // len(line) + 1

    async def body():
        chunk = (line * 1000).encode()
        for _ in range(count // 1000):
            yield chunk

    op = await create(api)
    assert (await put(session, op, body()))[0] == 200
    size = (emulator.emulator.storage / op["operationId"] / "input.jsonl").stat().st_size
    assert size == (count // 1000) * 1000 * len(line) > 20 << 20


async def test_lost_upload_and_expired_url_switches(api, emulator, session):
    emulator.faults.lose_uploads = 1
    op = await create(api)
    assert (await put(session, op, jsonl(LINES)))[0] == 200
    assert (await status_of(api, op))["operationStatus"] == "awaiting_input"  # it never arrived
    assert (await put(session, op, jsonl(LINES)))[0] == 200
    await emulator.emulator.idle()
    emulator.faults.expired_urls = 1
    stale = (await status_of(api, op))["responseDownloadUrl"]
    assert (await fetch(session, stale))[0] == 403
    fresh = (await status_of(api, op))["responseDownloadUrl"]
    assert (await fetch(session, fresh))[0] == 200
