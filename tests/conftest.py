"""Shared fixtures: the emulator on a loopback port, a small client for it, the broker,
`coderd run` processes, and small tmpfs mounts for the disk-fault tests."""

from __future__ import annotations

import base64
import subprocess

import aiohttp
import pytest

from daemon.emulator import Client, EmulatorConfig, EmulatorServer, Faults, ThreadedEmulatorServer

CLIENT_ID, CLIENT_SECRET = "client1", "secret123"


def quiet_config(**overrides) -> EmulatorConfig:
    """An emulator with no latency and no throttle, unless a test asks for them."""
    config = dict(requests_per_second=0, processing_seconds=0, faults=Faults(latency=0))
    config.update(overrides)
    return EmulatorConfig(**config)


class ApiClient:
    """Speaks to the emulator the way the guide's examples do."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.token: str | None = None

    async def fetch_token(self, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> aiohttp.ClientResponse:
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        async with self.session.post(
            f"{self.url}/oauth2/token",
            headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": "client_credentials"},
        ) as response:
            body = await response.json()
            if response.status == 200:
                self.token = body["access_token"]
            response.body = body
            return response

    async def call(self, method: str, path: str, *, token: str | None = None, **kwargs):
        """(status, parsed JSON or text) of one /v1 call with the raw token header."""
        headers = kwargs.pop("headers", {})
        auth = token if token is not None else self.token
        if auth is not None:
            headers["Authorization"] = auth
        async with self.session.request(method, f"{self.url}{path}", headers=headers, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def emulator():
    async with EmulatorServer(quiet_config()) as server:
        yield server


@pytest.fixture
async def api(emulator):
    async with aiohttp.ClientSession() as session:
        client = ApiClient(session, emulator.url)
        await client.fetch_token()
        yield client


@pytest.fixture
async def make_emulator():
    """Start emulators with a given config; all are stopped at the end of the test."""
    servers = []

    async def start(**overrides) -> EmulatorServer:
        server = await EmulatorServer(quiet_config(**overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


PUBLIC = {"client1": Client(CLIENT_SECRET, "public")}


@pytest.fixture
async def broker():
    from harness import Broker, unique_prefix
    b = await Broker(unique_prefix()).open()
    yield b
    await b.close()


@pytest.fixture
async def coderd(tmp_path, broker):
    """Start `coderd run` processes against an emulator (rate and latency as asked)."""
    from harness import DaemonProcess, daemon_env

    started: list[DaemonProcess] = []
    servers: list[EmulatorServer] = []

    async def start(emulator: EmulatorServer | None = None, *, state_dir=None, **settings) -> DaemonProcess:
        if emulator is None:
            emulator = await ThreadedEmulatorServer(quiet_config(requests_per_second=1.0)).start()
            servers.append(emulator)
        state = state_dir or tmp_path / "state"
        env = daemon_env(emulator.url, broker, state, **settings)
        daemon = await DaemonProcess(env, tmp_path / f"coderd-{len(started)}.log").start()
        started.append(daemon)
        await daemon.wait_for_event(("consuming", "standing_by"))  # the active replica, or a standby
        return daemon

    yield start
    for daemon in started:
        await daemon.kill()
    for server in servers:
        await server.stop()


@pytest.fixture
def quiet_logs():
    """Logs at warning and above, into a buffer the test can read (structlog reset after)."""
    import io

    import structlog

    from daemon.logs import configure_logging

    buffer = io.StringIO()
    configure_logging("json", level="warning", stream=buffer)
    yield buffer
    structlog.reset_defaults()


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs at tmp_path / name: `tmpfs(name, "size=2m")`. Mounting needs root,
    so the test is skipped elsewhere; every mount is lazily unmounted at the end of the test."""
    mounted = []

    def mount(name: str, options: str):
        directory = tmp_path / name
        directory.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)
