"""The integrators' example producers (examples/), end to end against `coderd run`."""

import asyncio
import json
import os
import shutil
import sys

import jsonschema
import pytest
from harness import AMQP_URL, ROOT

EXAMPLES = ROOT / "examples"


async def run(*command: str, cwd=ROOT, env: dict | None = None, timeout: float = 180) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=str(cwd), env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command} did not finish within {timeout}s") from None
    return process.returncode, out.decode(), err.decode()


async def produce(broker, *command: str) -> dict:
    """Run an example against the test's request queue; the reply it prints."""
    code, out, err = await run(*command, AMQP_URL, env={"CODERD_REQUEST_QUEUE": broker.request_queue})
    assert code == 0, f"{command} exited {code}:\n{err}"
    return json.loads(out)


def assert_coded(reply: dict) -> None:
    schema = json.loads((ROOT / "docs" / "schemas" / "reply.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(reply)
    assert reply["status"] == "completed" and reply["error"] is None and reply["topic"] == "anzsco"
    first, second = reply["records"]
    assert (first["recordId"], second["recordId"]) == ("1", "2")
    assert first["codeStatus"] == "successful" and first["result"][0]["codeCategory"] == "261313"
    assert first["input"] == {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}


async def test_the_pika_producer(coderd, broker):
    await coderd()
    assert_coded(await produce(broker, sys.executable, str(EXAMPLES / "producer_pika.py")))


async def test_the_amqplib_producer(coderd, broker):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("the Node.js example needs node and npm on PATH")
    if not (EXAMPLES / "node_modules" / "amqplib").is_dir():
        code, out, err = await run(npm, "install", "--no-audit", "--no-fund", "--no-package-lock", cwd=EXAMPLES,
                                   timeout=300)
        if code != 0:
            pytest.skip(f"npm install failed in examples/ (is the npm registry reachable?):\n{(out + err)[-1500:]}")
    await coderd()
    assert_coded(await produce(broker, node, str(EXAMPLES / "producer_amqplib.js")))
