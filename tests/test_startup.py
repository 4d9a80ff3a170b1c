"""Start-up failures, each as a real `coderd run` process: one line on stderr naming what
is wrong (never a secret, never a traceback) and the exit code systemd expects -- 2 for
a configuration problem (`RestartPreventExitStatus=2`: restarting would not help), 1 for
the rest (`Restart=on-failure` tries again)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_emulator_cli import free_port

from daemon.config import ConfigError, Settings
from daemon.service import Daemon

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-client-secret-value"
AMQP_PASSWORD = "amqp-pa55-word-value"


def clean_env(**settings) -> dict[str, str]:
    """This process's environment without any CODERD_* or systemd credentials, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_") and k != "CREDENTIALS_DIRECTORY"}
    return env | {k: str(v) for k, v in settings.items()}


def coderd(*args: str, env: dict[str, str], prefix: Sequence[str] = (), timeout: float = 60
           ) -> subprocess.CompletedProcess:
    # cwd=ROOT: its config/coderd.toml has every key commented out (the defaults).
    return subprocess.run([*prefix, sys.executable, "-m", "daemon", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


_RESERVED: list[socket.socket] = []  # bound, never listening: held for the whole run


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once. The socket stays
    bound (without listening), so no listener of the test — the daemon's own http_listen
    on port 0, say — can be given the same port meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _RESERVED.append(s)
    return s.getsockname()[1]


def failure_line(done: subprocess.CompletedProcess) -> str:
    """The one line coderd printed about its failure. Log lines logged before it (JSON
    events: `starting`, `broker_node_unreachable`...) are allowed; anything else is not."""
    assert "Traceback" not in done.stderr, done.stderr
    plain = []
    for line in done.stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert len(plain) == 1, done.stderr
    return plain[0]


# --- credentials without api_url ---------------------------------------------------------

@pytest.mark.parametrize("source", ["client_id", "secret_file", "credentials_directory"])
def test_credentials_without_api_url_refuse_to_start(tmp_path, source):
    """Real credentials mean real data: without api_url it would go to the built-in emulator."""
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "client_secret").write_text(SECRET + "\n")
    # A broker that refuses: were the check missing, coderd would fail (exit 1) instead of running.
    env = clean_env(CODERD_STATE_DIR=tmp_path / "state", CODERD_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
                    CODERD_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/", **{
        "client_id": {"CODERD_CLIENT_ID": "the-client-id"},
        "secret_file": {"CODERD_CLIENT_SECRET_FILE": tmp_path / "creds" / "client_secret"},
        "credentials_directory": {"CREDENTIALS_DIRECTORY": tmp_path / "creds"},  # systemd's LoadCredential=
    }[source])
    done = coderd("run", env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("coderd: config: api_url: "), done.stderr
    assert "emulator" in done.stderr and SECRET not in done.stderr + done.stdout
    assert not (tmp_path / "state").exists()  # refused before anything started

    # The read-only commands load the same configuration without needing credentials.
    jobs = coderd("jobs", env=env)
    assert jobs.returncode == 0 and "no batch jobs" in jobs.stdout, jobs.stderr
    status = coderd("status", env=env)  # nothing listens on http_listen: "not running", not a config error
    assert status.returncode == 1 and "not running" in status.stdout and "config" not in status.stderr


async def test_the_daemon_never_hands_credentials_to_the_builtin_emulator(tmp_path):
    """Settings that slipped past load_settings's check (built for a read-only command)
    are refused by the daemon itself, before the emulator starts."""
    settings = Settings.model_validate({"client_id": "the-client-id", "client_secret": SECRET,
                                        "state_dir": tmp_path / "state", "http_listen": "127.0.0.1:0",
                                        "amqp_url": f"amqp://guest:guest@127.0.0.1:{closed_port()}/"},
                                       context={"credentials_required": False})
    assert settings.uses_emulator
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(Daemon(settings).run(asyncio.Event()), 30)
    assert str(caught.value).startswith("config: api_url: ") and caught.value.exit_code == 2


# --- state_dir -----------------------------------------------------------------------------

def assert_state_dir_refused(done: subprocess.CompletedProcess, state_dir: Path, reason: str) -> None:
    assert done.returncode == 2, done.stderr
    # Checked before anything starts or logs: the line is all there is on stderr.
    assert done.stderr == f"coderd: state_dir: {state_dir} is not writable: {reason}\n"


def test_state_dir_under_a_regular_file_is_refused(tmp_path):
    """A file where a directory should be: creating state_dir fails for every user, root
    included (ENOTDIR), so this test means the same wherever it runs."""
    (tmp_path / "a-file").write_text("")
    state_dir = tmp_path / "a-file" / "state"
    done = coderd("run", env=clean_env(CODERD_STATE_DIR=state_dir))
    assert_state_dir_refused(done, state_dir, "Not a directory")


def test_state_dir_that_is_a_file_is_refused(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.write_text("")
    done = coderd("run", env=clean_env(CODERD_STATE_DIR=state_dir))
    assert_state_dir_refused(done, state_dir, "Not a directory")


@pytest.mark.parametrize("locked", ["parent", "state_dir"])
def test_state_dir_without_write_permission_is_refused(tmp_path, locked):
    """chmod 0500 on state_dir's parent (state_dir cannot be created) or on state_dir itself
    (it exists, so only creating a file in it shows it is not writable: os.mkdir with
    exist_ok alone would pass). Root ignores permission bits (CAP_DAC_OVERRIDE): checked
    here, it creates the directory in a 0500 one. So when the tests run as root, coderd runs
    under `setpriv` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding
    set, which makes root obey the mode bits like any user."""
    directory = tmp_path / "locked"
    directory.mkdir()
    state_dir = directory / "state"
    if locked == "state_dir":
        state_dir.mkdir()
    (directory if locked == "parent" else state_dir).chmod(0o500)
    prefix = []
    if os.geteuid() == 0:
        os.mkdir(directory / "root-probe")  # root bypasses the 0500: hence setpriv below
        os.rmdir(directory / "root-probe")
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    try:
        done = coderd("run", env=clean_env(CODERD_STATE_DIR=state_dir), prefix=prefix)
    finally:
        (directory if locked == "parent" else state_dir).chmod(0o700)
    assert_state_dir_refused(done, state_dir, "Permission denied")


def test_state_dir_on_a_read_only_file_system_is_refused(tmp_path):
    """A read-only bind mount, which stops root too (EROFS): coderd runs in a mount
    namespace of its own (`unshare -m`) where state_dir is remounted read-only. Needs
    root (CAP_SYS_ADMIN); skipped elsewhere."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only bind mount")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    script = (f'mount --bind "{state_dir}" "{state_dir}" && mount -o remount,bind,ro "{state_dir}" && '
              'exec "$@"')
    done = coderd("run", env=clean_env(CODERD_STATE_DIR=state_dir),
                  prefix=["unshare", "-m", "sh", "-c", script, "sh"])
    assert_state_dir_refused(done, state_dir, "Read-only file system")


# --- the broker, http_listen ---------------------------------------------------------------

@pytest.mark.parametrize("nodes", [1, 2])
def test_unreachable_broker_is_one_line_and_exit_1(tmp_path, nodes):
    ports = [closed_port() for _ in range(nodes)]
    urls = [f"amqp://coderd:{AMQP_PASSWORD}@127.0.0.1:{port}/" for port in ports]
    env = clean_env(CODERD_AMQP_URL=",".join(urls), CODERD_STATE_DIR=tmp_path / "state",
                    CODERD_HTTP_LISTEN="127.0.0.1:0")
    started = time.monotonic()
    done = coderd("run", env=env)
    assert time.monotonic() - started < 15  # refused: no waiting out a 30 s connect timeout
    assert done.returncode == 1, done.stderr
    line = failure_line(done)
    masked = ",".join(f"amqp://coderd:***@127.0.0.1:{port}/" for port in ports)
    assert line == f"coderd: broker: cannot connect to {'any of ' if nodes > 1 else ''}{masked}: Connection refused"
    assert AMQP_PASSWORD not in done.stderr + done.stdout


def test_http_listen_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = coderd("run", env=clean_env(CODERD_STATE_DIR=tmp_path / "state",
                                           CODERD_HTTP_LISTEN=f"127.0.0.1:{port}"))
    assert done.returncode == 1, done.stderr
    assert failure_line(done) == f"coderd: http_listen: cannot listen on 127.0.0.1:{port}: Address already in use"
