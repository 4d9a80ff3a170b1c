"""Start-up, configuration, the embedded emulator, clean shutdown, and secrets kept out of logs."""

import json
import os
import subprocess
import sys
import uuid

from conftest import quiet_config
from harness import ROOT, DaemonProcess, daemon_env

from daemon.emulator import Faults
from daemon.emulator import ThreadedEmulatorServer as EmulatorServer

GUIDE = {"occp_text": "software developer", "tasks_text": "writing code and unit tests"}


def test_a_bad_value_stops_the_daemon_with_one_line_naming_the_key(tmp_path):
    env = {**os.environ, "CODERD_REQUESTS_PER_SECOND": "-1", "CODERD_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "daemon", "run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "requests_per_second" in lines[0]


async def test_without_api_url_it_codes_through_the_builtin_emulator(broker, tmp_path):
    env = daemon_env("unused", broker, tmp_path / "state")
    for key in ("CODERD_API_URL", "CODERD_AUTH_URL", "CODERD_CLIENT_ID", "CODERD_CLIENT_SECRET"):
        env.pop(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")} | env
    daemon = await DaemonProcess(env, tmp_path / "coderd.log").start()
    try:
        await daemon.wait_for_event("consuming")
        warning = [e for e in daemon.events() if e.get("event") == "using_builtin_emulator"]
        assert warning and warning[0]["level"] == "warning" and "EMULATOR" in warning[0]["note"]
        await broker.publish({"topic": "anzsco", "record": GUIDE}, correlation_id="embedded")
        [(cid, reply)] = await broker.replies(1, timeout=60)
        assert cid == "embedded" and reply["record"]["result"][0]["codeCategory"] == "261313"
    finally:
        await daemon.kill()


async def test_sigterm_finishes_in_flight_work_and_exits_0(coderd, broker):
    # Handing back what outlives the grace period is tested in-process (test_supervision.py).
    async with EmulatorServer(quiet_config(requests_per_second=2.0, faults=Faults(latency=0.3))) as api:
        daemon = await coderd(api, requests_per_second=2)
        count = 1500
        for i in range(count):
            await broker.publish({"topic": "anzsco", "record": {"occp_text": "baker", "tasks_text": f"bread {i}"}},
                                 correlation_id=f"c{i}")
        await daemon.wait_for_event("request_done", timeout=60)
        assert await daemon.terminate(timeout=45) == 0
        events = daemon.events()
        assert any(e.get("event") == "stopped" for e in events)
        answered = {e["correlation_id"] for e in events if e.get("event") == "request_done"}
        assert 0 < len(answered) < count
        assert [e["event"] for e in events].index("stopped_consuming") < [e["event"] for e in events].index("stopped")
        # Nothing lost: what was not answered waits in the queue, and a new daemon answers it.
        await coderd(api, requests_per_second=2)
        expected = {f"c{i}" for i in range(count)}
        assert set(await broker.answered(expected)) == expected


async def test_secrets_never_reach_the_log(broker, tmp_path):
    user, password = f"coderd-{uuid.uuid4().hex[:6]}", f"amqp-pass-{uuid.uuid4().hex}"
    subprocess.run(["rabbitmqctl", "add_user", user, password], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", user, ".*", ".*", ".*"], check=True, capture_output=True)
    try:
        async with EmulatorServer(quiet_config(requests_per_second=20)) as api:
            env = daemon_env(api.url, broker, tmp_path / "state", amqp_url=f"amqp://{user}:{password}@127.0.0.1:5672/",
                             log_format="json", cache="false")  # the second request must make a call
            daemon = await DaemonProcess(env, tmp_path / "coderd.log").start()
            await daemon.wait_for_event("consuming")
            await broker.publish({"topic": "anzsco", "record": GUIDE})
            await broker.replies(1)
            api.faults.force_429 = 1  # an error path logs the failed call too
            await broker.publish({"topic": "anzsco", "record": GUIDE})
            await broker.replies(1)
            await daemon.terminate()
            token = json.loads((tmp_path / "state" / "token.json").read_text())["access_token"]
            log = daemon.log_text()
            assert "coding_call_failed" in log and "starting" in log
            for secret in (password, "secret123", token):
                assert secret not in log
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True)
