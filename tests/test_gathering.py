"""`coderd topics` and `coderd models TOPIC` as processes, against the emulator: the
daemon's token cache and quota ledger in state_dir, and the built-in emulator when no
api_url is configured."""

import asyncio
import json
import os
import sys

import pytest
from conftest import quiet_config
from harness import ROOT

from daemon.emulator import EmulatorServer

ANZSCO_LATEST, ANZSCO_OLDER = "00000000-0000-0000-0000-000000000002", "00000000-0000-0000-0000-000000000003"


@pytest.fixture
async def api():
    async with EmulatorServer(quiet_config()) as server:
        yield server


def environment(state_dir, api=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERD_")}
    env.update(CODERD_STATE_DIR=str(state_dir), CODERD_LOG_FORMAT="json")
    if api is not None:
        env.update(CODERD_API_URL=api.url, CODERD_AUTH_URL=api.url, CODERD_CLIENT_ID="client1",
                   CODERD_CLIENT_SECRET="secret123")
    return env


async def coderd(env, *args):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, "--config", "/dev/null", cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_topics_table_and_json(api, tmp_path):
    code, out, err = await coderd(environment(tmp_path, api), "topics")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["uriName", "fullName"]
    names = [line.split()[0] for line in lines[1:]]
    assert "anzsco" in names and "osca" in names
    assert any(line.startswith("osca") and "Occupation Standard Classification for Australia" in line for line in lines)
    assert "EMULATOR" not in err
    code, out, _ = await coderd(environment(tmp_path, api), "topics", "--json")
    assert code == 0 and {"uriName": "anzsco", "fullName": json.loads(out)[0]["fullName"]} in json.loads(out)


async def test_models_marks_the_latest(api, tmp_path):
    code, out, err = await coderd(environment(tmp_path, api), "models", "anzsco")
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {ANZSCO_LATEST, ANZSCO_OLDER}
    assert rows[ANZSCO_LATEST][-1] == "latest" and rows[ANZSCO_LATEST][1] == "2"
    assert rows[ANZSCO_OLDER][-1] != "latest" and "2022-11-01" in rows[ANZSCO_OLDER][2]
    code, out, _ = await coderd(environment(tmp_path, api), "models", "osca", "--json")
    assert code == 0 and [m["modelId"] for m in json.loads(out)][0] == "00000000-0000-0000-0000-000000000001"


async def test_unknown_topic_is_one_line_and_exit_1(api, tmp_path):
    code, out, err = await coderd(environment(tmp_path, api), "models", "nosuchtopic")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nosuchtopic" in err and "does not exist" in err and "404" in err


async def test_token_cache_and_quota_ledger_are_the_daemons(api, tmp_path):
    env = environment(tmp_path, api)
    assert (await coderd(env, "topics"))[0] == 0
    assert api.stats.token_requests == 1 and (tmp_path / "token.json").exists()
    assert (await coderd(env, "models", "osca"))[0] == 0
    assert api.stats.token_requests == 1  # the cached token was reused: no new token request
    assert api.stats.v1_calls == 3  # topics, models, models/latest
    assert json.loads((tmp_path / "quota.json").read_text())["used"] == 3  # every call counted in the ledger


async def test_no_api_url_answers_from_the_builtin_emulator(tmp_path):
    code, out, err = await coderd(environment(tmp_path), "topics")
    assert code == 0, err
    assert "no api_url" in err and "BUILT-IN EMULATOR" in err
    assert "anzsco" in out and "osca" in out
    assert not (tmp_path / "token.json").exists()  # the daemon's state_dir is not touched
