"""Configuration: contract defaults, file + environment, one-line errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, Settings, load_settings

CONTRACT_DEFAULTS = {
    "amqp_url": "amqp://guest:guest@127.0.0.1:5672/",
    "request_queue": "coding.requests",
    "default_reply_queue": "coding.replies",
    "api_url": None,
    "auth_url": None,
    "client_id": None,
    "client_secret": None,
    "tier": "public",
    "requests_per_second": 1.0,
    "daily_quota": 1000,
    "batch_threshold": 3000,
    "batch_poll_seconds": 600,
    "number_of_suggestions": 3,
    "state_dir": Path("var"),
    "inbox_dir": Path("var/inbox"),
    "outbox_dir": Path("var/outbox"),
    "http_listen": "127.0.0.1:9464",
    "log_format": "json",
}

REAL_API = {"CODERD_API_URL": "https://partner-coder.api.abs.gov.au/",
            "CODERD_AUTH_URL": "https://partner-coder.auth.abs.gov.au"}
WITH_ID = {**REAL_API, "CODERD_CLIENT_ID": "me"}  # where the client secret comes from is what a test varies


@pytest.fixture(autouse=True)
def empty_directory(tmp_path, monkeypatch):
    """No config/coderd.toml in the current directory unless a test writes one."""
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("config: ")
    return message


def test_defaults_are_the_contracts():
    settings = load_settings(environ={})
    for key, expected in CONTRACT_DEFAULTS.items():
        assert getattr(settings, key) == expected, key
    assert settings.uses_emulator
    assert settings.amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/"]
    assert settings.http_host_port == ("127.0.0.1", 9464)


@pytest.mark.parametrize("tier, quota", [("public", 1000), ("partner", 10000)])
def test_daily_quota_defaults_by_tier(tier, quota):
    assert load_settings(environ={"CODERD_TIER": tier}).daily_quota == quota


def test_explicit_daily_quota_wins_over_tier():
    settings = load_settings(environ={"CODERD_TIER": "partner", "CODERD_DAILY_QUOTA": "250"})
    assert settings.daily_quota == 250


def test_file_values_load_and_environment_overrides_them(tmp_path):
    path = write_toml(tmp_path / "custom.toml", """
        request_queue = "q.from.file"
        requests_per_second = 2
        tier = "partner"
        http_listen = "[::1]:0"
        amqp_url = "amqp://a:pw1@node1:5672/, amqps://b:pw2@node2:5671/"
    """)
    settings = load_settings(path, environ={"CODERD_REQUESTS_PER_SECOND": "1.5",
                                            "CODERD_STATE_DIR": "/srv/coderd"})
    assert settings.request_queue == "q.from.file"
    assert settings.tier == "partner" and settings.daily_quota == 10000
    assert settings.requests_per_second == 1.5
    assert settings.state_dir == Path("/srv/coderd")
    assert settings.http_host_port == ("::1", 0)
    assert settings.amqp_urls == ["amqp://a:pw1@node1:5672/", "amqps://b:pw2@node2:5671/"]


def test_default_config_file_is_read_from_the_current_directory(tmp_path):
    write_toml(tmp_path / "config" / "coderd.toml", 'batch_threshold = 42\n')
    assert load_settings(environ={}).batch_threshold == 42


def test_empty_environment_value_unsets_an_optional_key(tmp_path):
    path = write_toml(tmp_path / "c.toml", 'api_url = "https://api.example"\nauth_url = "https://auth.example"\n'
                                           'client_id = "me"\nclient_secret = "file-secret-1"\n')
    unset = {"CODERD_API_URL": "", "CODERD_AUTH_URL": "", "CODERD_CLIENT_ID": "", "CODERD_CLIENT_SECRET": ""}
    settings = load_settings(path, environ=unset)
    assert settings.uses_emulator and settings.client_id is None and settings.client_secret is None
    # Unsetting only the URLs would leave credentials without api_url: an error, not the emulator.
    message = config_error(config_path=path, environ={"CODERD_API_URL": "", "CODERD_AUTH_URL": ""})
    assert message.startswith("config: api_url: ") and "file-secret-1" not in message


def test_missing_config_path_is_an_error(tmp_path):
    message = config_error(config_path=tmp_path / "nope.toml", environ={})
    assert "nope.toml" in message


@pytest.mark.parametrize("source, key, detail", [
    ({"CODERD_REQUESTS_PER_SECOND": "-1"}, "requests_per_second", "from CODERD_REQUESTS_PER_SECOND"),
    ({"CODERD_TIER": "gold"}, "tier", "'gold'"),
    ({"CODERD_HTTP_LISTEN": "nonsense"}, "http_listen", "'nonsense'"),
    ({"CODERD_HTTP_LISTEN": "127.0.0.1:70000"}, "http_listen", "70000"),
    ({"CODERD_NUMBER_OF_SUGGESTIONS": "17"}, "number_of_suggestions", "17"),
    ({"CODERD_AMQP_URL": "amqp://h1/,http://h2/"}, "amqp_url", "amqp://"),
    ({"CODERD_API_URL": "ftp://x"}, "api_url", "http"),
    ({"CODERD_API_URL": "https://api.example", "CODERD_CLIENT_ID": "me", "CODERD_CLIENT_SECRET": "s3cret-value"},
     "auth_url", "required"),
])
def test_bad_environment_value_names_the_key(source, key, detail):
    message = config_error(environ=source)
    assert message.startswith(f"config: {key}: ") and detail in message


@pytest.mark.parametrize("toml, key", [
    ("tier = 'gold'", "tier"),
    ("requests_per_second = -1", "requests_per_second"),
    ("colour = 'blue'", "colour"),
    ("[amqp]\nurl = 'amqp://x/'", "amqp"),
])
def test_bad_file_value_names_the_key_and_the_file(tmp_path, toml, key):
    path = write_toml(tmp_path / "bad.toml", toml)
    message = config_error(config_path=path, environ={})
    assert message.startswith(f"config: {key}: ") and str(path) in message


def test_unparsable_file_is_one_line(tmp_path):
    path = write_toml(tmp_path / "broken.toml", "tier = \n")
    assert str(path) in config_error(config_path=path, environ={})


def test_bad_amqp_url_error_hides_its_password():
    message = config_error(environ={"CODERD_AMQP_URL": "http://user:hunter22@host/"})
    assert "hunter22" not in message and "amqp_url" in message


def test_client_secret_from_environment_wins_over_every_other_source(tmp_path):
    secret_file = write_toml(tmp_path / "secret.txt", "from-secret-file\n")
    write_toml(tmp_path / "creds" / "client_secret", "from-credentials\n")
    config = write_toml(tmp_path / "c.toml", f'client_secret = "from-config-file"\nclient_secret_file = "{secret_file}"\n')
    environ = {**WITH_ID, "CODERD_CLIENT_SECRET": "from-environment", "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    secret = lambda **kw: load_settings(config, environ=environ).client_secret.get_secret_value()  # noqa: E731

    assert secret() == "from-environment"
    del environ["CODERD_CLIENT_SECRET"]
    assert secret() == "from-config-file"
    config.write_text(f'client_secret_file = "{secret_file}"\n')
    assert secret() == "from-secret-file"
    config.write_text("")
    assert secret() == "from-credentials"


def test_client_secret_file_contents_are_stripped(tmp_path):
    secret_file = write_toml(tmp_path / "secret.txt", "  padded-secret \n")
    settings = load_settings(environ={**WITH_ID, "CODERD_CLIENT_SECRET_FILE": str(secret_file)})
    assert settings.client_secret.get_secret_value() == "padded-secret"


def test_credentials_directory_without_the_file_is_no_secret(tmp_path):
    assert load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}).client_secret is None


def test_unreadable_client_secret_file_names_the_key(tmp_path):
    message = config_error(environ={"CODERD_CLIENT_SECRET_FILE": str(tmp_path / "missing")})
    assert message.startswith("config: client_secret_file: ")


def test_real_api_without_client_id_is_an_error():
    message = config_error(environ={**REAL_API, "CODERD_CLIENT_SECRET": "s3cret-value"})
    assert message.startswith("config: client_id: ")


def test_real_api_without_client_secret_is_an_error():
    message = config_error(environ={**REAL_API, "CODERD_CLIENT_ID": "me"})
    assert message.startswith("config: client_secret: ")


def test_real_api_with_credentials_loads():
    settings = load_settings(environ={**REAL_API, "CODERD_CLIENT_ID": "me", "CODERD_CLIENT_SECRET": "s3cret-value"})
    assert not settings.uses_emulator
    assert settings.api_url == "https://partner-coder.api.abs.gov.au"  # trailing slash stripped


def test_auth_url_without_api_url_is_an_error():
    assert config_error(environ={"CODERD_AUTH_URL": "https://auth.example"}).startswith("config: api_url: ")


def test_secret_values_and_public_view():
    settings = load_settings(environ={
        **WITH_ID, "CODERD_CLIENT_SECRET": "client-s3cret",
        "CODERD_AMQP_URL": "amqp://coderd:amqp-pa%24%24@node1/,amqp://coderd:other-pass@node2/",
    })
    secrets = settings.secret_values()
    assert {"client-s3cret", "amqp-pa%24%24", "amqp-pa$$", "other-pass"} <= set(secrets)

    view = settings.public_view()
    rendered = repr(view)
    for secret in secrets:
        assert secret not in rendered
    assert view["client_secret"] == "***"
    assert view["amqp_url"] == "amqp://coderd:***@node1/,amqp://coderd:***@node2/"
    assert view["daily_quota"] == 1000 and view["state_dir"] == "var"


def test_settings_are_frozen_and_reject_unknown_keys():
    settings = Settings()
    with pytest.raises(Exception):
        settings.tier = "partner"
    with pytest.raises(Exception):
        Settings(colour="blue")


def test_read_only_commands_read_no_secret_file(tmp_path):
    """`coderd status` and `coderd jobs` never need the secret: an unreadable secret file
    (the service's, not the operator's) does not stop them."""
    environ = {**WITH_ID, "CODERD_CLIENT_SECRET_FILE": str(tmp_path / "not-readable-here")}
    assert config_error(environ=environ).startswith("config: client_secret_file: ")
    assert load_settings(environ=environ, credentials_required=False).client_id == "me"


def test_read_only_commands_need_no_credentials():
    from daemon.config import ConfigError, load_settings

    env = {"CODERD_API_URL": "https://api.example", "CODERD_AUTH_URL": "https://auth.example"}
    with pytest.raises(ConfigError):
        load_settings(environ=env)
    assert load_settings(environ=env, credentials_required=False).api_url == "https://api.example"


# --- credentials without api_url ----------------------------------------------------------

@pytest.mark.parametrize("where", ["client_id", "environment", "config_file", "secret_file", "credentials_directory"])
def test_credentials_without_api_url_are_an_error(tmp_path, where):
    """Credentials mean real data, which must never go to the built-in emulator by mistake.
    A secret read from client_secret_file or $CREDENTIALS_DIRECTORY counts as configured."""
    secret = "the-real-client-s3cret"
    secret_file = write_toml(tmp_path / "creds" / "client_secret", secret + "\n")
    config = write_toml(tmp_path / "c.toml", f'client_secret = "{secret}"\n' if where == "config_file" else "")
    environ = {
        "client_id": {"CODERD_CLIENT_ID": "the-client-id"},
        "environment": {"CODERD_CLIENT_SECRET": secret},
        "config_file": {},
        "secret_file": {"CODERD_CLIENT_SECRET_FILE": str(secret_file)},
        "credentials_directory": {"CREDENTIALS_DIRECTORY": str(secret_file.parent)},
    }[where]
    message = config_error(config_path=config, environ=environ)
    assert message.startswith("config: api_url: required when credentials are configured")
    assert secret not in message and "emulator" in message
    expected_origin = {"client_id": "client_id from CODERD_CLIENT_ID",
                       "environment": "client_secret from CODERD_CLIENT_SECRET",
                       "config_file": f"client_secret from {config}",
                       "secret_file": "client_secret from client_secret_file, set in CODERD_CLIENT_SECRET_FILE",
                       "credentials_directory": "client_secret from $CREDENTIALS_DIRECTORY/client_secret"}[where]
    assert expected_origin in message
    # status and jobs read the configuration without needing (or judging) credentials.
    assert load_settings(config, environ=environ, credentials_required=False).uses_emulator


def test_no_credentials_and_no_api_url_is_the_emulator(tmp_path):
    assert load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}).uses_emulator  # no client_secret there


# --- no secret in an error ----------------------------------------------------------------

def test_unknown_key_never_shows_its_value(tmp_path):
    path = write_toml(tmp_path / "c.toml", 'client_secrete = "typo-s3cret-value"\ncolour = "blue-value"\n'
                                           '[broker]\npassword = "nested-pa55"\n')
    message = config_error(config_path=path, environ={})
    assert "config: client_secrete: unknown key (did you mean client_secret?)" in message
    assert "colour: unknown key" in message and "broker: unknown key" in message and str(path) in message
    for value in ("typo-s3cret-value", "blue-value", "nested-pa55"):
        assert value not in message


@pytest.mark.parametrize("toml, key, hidden, shown", [
    ('amqp_url = "guest:s3cret-pw@host"', "amqp_url", "s3cret-pw", "'guest:***@host'"),  # no scheme
    ('amqp_url = "amqp://u:pw@x@host:nan/"', "amqp_url", "pw@x", "'amqp://u:***@host:nan/'"),  # "@" in it
    ('amqp_url = "amqp://u:ok-pw@h1/,http://v:other-pw@h2/"', "amqp_url", "other-pw", "http://v:***@h2/"),
    ('amqp_url = ["amqp://u:listed-pw@h/"]', "amqp_url", "listed-pw", "amqp://u:***@h/"),  # not a string
    ('api_url = "ftp://u:api-pw@h/"', "api_url", "api-pw", "'ftp://u:***@h/'"),
    ('client_secret = 12345678', "client_secret", "12345678", None),  # secret-named: no value at all
    ('client_secret_file = 87654321', "client_secret_file", "87654321", None),
])
def test_bad_values_never_show_a_secret(tmp_path, toml, key, hidden, shown):
    path = write_toml(tmp_path / "c.toml", toml + "\n")
    message = config_error(config_path=path, environ={})
    assert message.startswith(f"config: {key}: ") and str(path) in message
    assert hidden not in message
    if shown is None:
        assert "got" not in message
    else:
        assert shown in message


def test_secret_pasted_as_client_secret_file_is_not_shown():
    message = config_error(environ={"CODERD_CLIENT_SECRET_FILE": "pasted-s3cret-value"})
    assert message == ("config: client_secret_file: cannot read the file it names: No such file or directory "
                       "(from CODERD_CLIENT_SECRET_FILE)")


@pytest.mark.parametrize("text, masked", [
    ("amqp://user:pw@host:5672/v", "amqp://user:***@host:5672/v"),
    ("user:pw@host", "user:***@host"),
    ("amqp://a:p1@h1/, amqp://b:p2@h2/", "amqp://a:***@h1/, amqp://b:***@h2/"),
    ("amqps://u:p@ss/w,rd@h/", "amqps://u:***@h/"),  # "@", "/" and "," in a password: masked whole
    ("amqp://host:5672/", "amqp://host:5672/"),
    ("me@example.org", "me@example.org"),
    ("[::1]:9464", "[::1]:9464"),
])
def test_mask_userinfo(text, masked):
    from daemon.config import mask_userinfo
    assert mask_userinfo(text) == masked
