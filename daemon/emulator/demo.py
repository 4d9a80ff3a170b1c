"""Start the emulator in-process and code the user guide's examples through it over HTTP.

`python -m daemon.emulator.demo` — what `scripts/run` shows until the daemon runs it end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp

from .app import EmulatorServer
from .settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, EmulatorConfig

SINGLE = {"record": {"occp_text": "software developer", "tasks_text": "writing code and unit tests"},
          "numberOfSuggestions": 3}
SMALL_BATCH = {"records": [
    {"occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    {"occp_text": "Paramedic", "tasks_text": "respond to emergencies"},
    {"recordId": "1", "occp_text": "Sales assistant"},
], "numberOfSuggestions": 3}
BATCH_LINES = [
    {"recordId": "1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"},
    {"recordId": "2", "occp_text": "Paramedic", "tasks_text": "responding to medical emergencies"},
    {"recordId": "3", "occp_text": "Brickie", "tasks_text": ""},
]


def show(title: str, body) -> None:
    print(f"\n== {title}\n{json.dumps(body, indent=2)}", flush=True)


async def main() -> None:
    config = EmulatorConfig(processing_seconds=2)
    async with EmulatorServer(config) as server, aiohttp.ClientSession() as http:
        print(f"coding API emulator on {server.url}: 1 call/s, ~1 s a call, as the guide states")
        basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
        async with http.post(f"{server.url}/oauth2/token", headers={"Authorization": f"Basic {basic}"},
                             data={"grant_type": "client_credentials"}) as r:
            headers = {"Authorization": (await r.json())["access_token"]}
        print("token obtained (not shown)")

        async def v1(method: str, path: str, **kw):
            await asyncio.sleep(1.05)  # stay within the 1 call/s throttle
            async with http.request(method, f"{server.url}/v1{path}", headers=headers, **kw) as r:
                return await r.json()

        show("GET /v1/topics", await v1("GET", "/topics"))
        show("GET /v1/topics/anzsco/models/latest", await v1("GET", "/topics/anzsco/models/latest"))
        show("POST /v1/topics/anzsco/code (single record)", await v1("POST", "/topics/anzsco/code", json=SINGLE))
        show("POST /v1/topics/anzsco/code (small batch)", await v1("POST", "/topics/anzsco/code", json=SMALL_BATCH))
        op = await v1("POST", "/topics/osca/batch-code")
        print(f"\n== batch operation {op['operationId']} created; uploading 3 lines")
        upload = "".join(json.dumps(line) + "\n" for line in BATCH_LINES)
        async with http.put(op["requestUploadUrl"], data=upload, headers={
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": op["bucketKmsKeyArn"]}) as r:
            r.raise_for_status()
        while (status := await v1("GET", f"/topics/osca/batch-code/operations/{op['operationId']}"))[
                "operationStatus"] != "complete":
            print(f"   {status['operationStatus']}")
        async with http.get(status["responseDownloadUrl"]) as r:
            output = (await r.read()).decode()
        show("batch output (JSONL)", [json.loads(line) for line in output.splitlines()])
        print(f"\nemulator saw: {json.dumps(server.stats.as_dict())}")


if __name__ == "__main__":
    asyncio.run(main())
