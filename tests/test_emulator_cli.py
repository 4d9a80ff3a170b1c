"""`coderd emulator` as its own process: serves the guide's credentials and stops cleanly."""

import asyncio
import signal
import socket
import sys

from conftest import ApiClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_emulator_command_serves_and_stops_on_sigterm(session):
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "emulator", "--port", str(port), "--latency", "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        banner = await asyncio.wait_for(process.stdout.readline(), 30)
        assert f"http://127.0.0.1:{port}" in banner.decode()
        api = ApiClient(session, f"http://127.0.0.1:{port}")
        assert (await api.fetch_token()).status == 200
        status, topics = await api.call("GET", "/v1/topics")
        assert status == 200 and topics
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
