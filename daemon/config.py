"""Configuration: a TOML file, overridden by CODERD_* environment variables, validated
once at start-up. A bad value stops the daemon with one line naming the key."""

from __future__ import annotations

import difflib
import errno
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .logs import redact_text

DEFAULT_CONFIG_PATH = Path("config/coderd.toml")
ENV_PREFIX = "CODERD_"
DAILY_QUOTA_BY_TIER = {"public": 1000, "partner": 10000}
SECRET_MASK = "***"

# A key whose name looks like this never has its value shown in an error, known or not.
SECRET_KEY_NAME = re.compile(r"secret|password|passwd|token|credential|key", re.IGNORECASE)
# user:password@ in a URL, with or without a scheme ("guest:pw@host" too). The password
# runs to the last "@" before the next URL ("://") or a blank: a password holding "@",
# "/" or "," is masked whole (at worst a host is masked with it).
_USERINFO = re.compile(r"((?:[a-z][a-z0-9+.-]*://)?[^\s,:/?#@'\"\[\](){}]*:)(?:(?!://)\S)*@", re.IGNORECASE)


class StartupError(Exception):
    """Start-up cannot go on: one line for stderr, and the exit code systemd expects
    (2: a configuration problem, restarting will not help; 1: try again later)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(StartupError):
    """One line: `config: <key>: <problem>`; exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


def mask_userinfo(text: str) -> str:
    """`amqp://user:pass@host` and `user:pass@host` -> `...user:***@host`, for every URL in the text."""
    return _USERINFO.sub(r"\1" + SECRET_MASK + "@", text) if "@" in text else text


def failure_reason(exc: BaseException) -> str:
    """A short reason for a one-line error, with no secret in it: `Connection refused`,
    `timed out`, ... (aiormq wraps OSErrors, keeping their errno as the first argument)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    code = exc.errno if isinstance(exc, OSError) else (exc.args[0] if exc.args else None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return mask_userinfo(redact_text(_one_line(str(exc)))) or type(exc).__name__


def check_writable_dir(path: Path, key: str) -> None:
    """Create `path` if needed and prove it writable by creating and removing a file in it,
    as the daemon will (os.access only predicts: it answers for the real uid, and knows
    nothing of a full disk). Raises StartupError, exit code 2 (a configuration problem):
    `<key>: <path> is not writable: <reason>`."""
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".coderd-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StartupError(_one_line(f"{key}: {path} is not writable: {reason}"), exit_code=2) from None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    request_queue: str = Field("coding.requests", min_length=1)
    interactive_queue: str = Field(None, min_length=1)  # None in input: request_queue + ".interactive"
    interactive_max_wait_seconds: float = Field(2.0, ge=0)
    default_reply_queue: str = Field("coding.replies", min_length=1)
    api_url: str | None = None
    auth_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    tier: Literal["public", "partner"] = "public"
    requests_per_second: float = Field(1.0, gt=0)
    daily_quota: int | None = Field(None, ge=1)  # None in input: the tier's default
    batch_threshold: int = Field(3000, ge=1)
    batch_poll_seconds: float = Field(600.0, gt=0)
    number_of_suggestions: int = Field(3, ge=0, le=16)
    state_dir: Path = Path("var")
    inbox_dir: Path = Path("var/inbox")
    outbox_dir: Path = Path("var/outbox")
    http_listen: str = "127.0.0.1:9464"
    log_format: Literal["json", "console"] = "json"
    quota_burst: float = Field(0.05, ge=0, le=1)
    cache: bool = True
    cache_max_entries: int = Field(1_000_000, ge=1)
    cache_ttl_days: float = Field(30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _interactive_queue_from_request_queue(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("interactive_queue") is None:
            request_queue = data.get("request_queue", cls.model_fields["request_queue"].default)
            if isinstance(request_queue, str):
                data = {**data, "interactive_queue": f"{request_queue}.interactive"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _daily_quota_from_tier(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("daily_quota") is None:
            tier = data.get("tier", cls.model_fields["tier"].default)
            # An unknown tier leaves it None: the error is reported on `tier`.
            quota = DAILY_QUOTA_BY_TIER.get(tier) if isinstance(tier, str) else None
            data = {**data, "daily_quota": quota}
        return data

    @field_validator("amqp_url")
    @classmethod
    def _amqp_urls(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",")]
        for url in urls:
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError("every URL must start with amqp:// or amqps://")
            urlsplit(url).port  # raises ValueError on a bad port
        return ",".join(urls)

    @field_validator("api_url", "auth_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("http_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError("must be host:port with a port from 0 to 65535")
        return value

    @model_validator(mode="after")
    def _real_api_settings(self, info: ValidationInfo) -> Settings:
        # A model-level error has no location: its message starts with the key it names.
        context = info.context or {}
        credentials_required = context.get("credentials_required", True)
        if self.api_url is None:
            if self.auth_url is not None:
                raise ValueError("api_url: required when auth_url is set (leave both unset for the emulator)")
            if credentials_required and (self.client_id or self.client_secret is not None):
                # Real credentials mean real data: it must never go to the built-in emulator.
                origins = context.get("origins", {})
                given = [f"{key} from {origins[key]}" if key in origins else key
                         for key, value in (("client_id", self.client_id), ("client_secret", self.client_secret))
                         if value]
                raise ValueError(f"api_url: required when credentials are configured ({'; '.join(given)}): "
                                 "without api_url coderd would code through its built-in emulator "
                                 "(set api_url and auth_url, or remove the credentials to run the emulator)")
            return self
        if self.auth_url is None:
            raise ValueError("auth_url: required when api_url is set")
        if not credentials_required:
            return self  # a read-only command (status, jobs) needs no credentials
        if not self.client_id:
            raise ValueError("client_id: required when api_url is set")
        if self.client_secret is None:
            raise ValueError("client_secret: required when api_url is set (CODERD_CLIENT_SECRET, "
                             "client_secret_file, or $CREDENTIALS_DIRECTORY/client_secret)")
        return self

    @property
    def amqp_urls(self) -> list[str]:
        return self.amqp_url.split(",")

    @property
    def uses_emulator(self) -> bool:
        return self.api_url is None

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)  # "[::1]:9464" -> ("::1", 9464)

    def secret_values(self) -> list[str]:
        """Strings that must never be logged: the client secret and URL passwords (both as
        written and percent-decoded)."""
        values = [self.client_secret.get_secret_value()] if self.client_secret else []
        for url in [*self.amqp_urls, self.api_url, self.auth_url]:
            password = urlsplit(url).password if url else None
            if password:
                values += [password, unquote(password)]
        return list(dict.fromkeys(values))

    def public_view(self) -> dict[str, Any]:
        """The settings for a start-up log line: secrets masked."""
        view = self.model_dump(mode="json")
        view["client_secret"] = SECRET_MASK if self.client_secret else None
        for key in ("amqp_url", "api_url", "auth_url"):
            if view[key]:
                view[key] = mask_userinfo(view[key])
        return view


def load_settings(config_path: Path | None = None, environ: Mapping[str, str] | None = None, *,
                  credentials_required: bool = True) -> Settings:
    environ = os.environ if environ is None else environ
    if config_path is not None:
        values, origins = _read_file(Path(config_path))
    elif DEFAULT_CONFIG_PATH.is_file():
        values, origins = _read_file(DEFAULT_CONFIG_PATH)
    else:
        values, origins = {}, {}
    for key, field in Settings.model_fields.items():
        name = ENV_PREFIX + key.upper()
        if name in environ:
            # An empty variable unsets an optional key (even one the file sets).
            values[key] = None if environ[name] == "" and field.default is None else environ[name]
            origins[key] = name
    if credentials_required:  # a read-only command (status, jobs) reads no secret file
        _resolve_client_secret(values, origins, environ)
    try:
        return Settings.model_validate(values, context={"credentials_required": credentials_required,
                                                        "origins": origins})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, values, origins)) from None


def settings_for_command(config_arg: str | None, *, credentials_required: bool = True) -> Settings:
    """Settings for a `coderd` command; a bad configuration exits 2 with its one line."""
    try:
        return load_settings(Path(config_arg) if config_arg else None, credentials_required=credentials_required)
    except ConfigError as exc:
        print(f"coderd: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config: {path}: no such file") from None
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(_one_line(f"config: {path}: {exc}")) from None
    return values, dict.fromkeys(values, str(path))


def _resolve_client_secret(values: dict[str, Any], origins: dict[str, str], environ: Mapping[str, str]) -> None:
    """First found wins: CODERD_CLIENT_SECRET (already merged over the file), the file's
    client_secret, the file named by client_secret_file, $CREDENTIALS_DIRECTORY/client_secret."""
    if values.get("client_secret"):
        return
    values.pop("client_secret", None)
    origins.pop("client_secret", None)
    secret_file = values.get("client_secret_file")
    if isinstance(secret_file, str) and secret_file:
        values["client_secret"] = _read_secret(Path(secret_file), "client_secret_file",
                                               origins.get("client_secret_file"))
        # Not the path: a secret pasted where its file's name belongs must not be shown.
        origins["client_secret"] = f"client_secret_file, set in {origins.get('client_secret_file', '?')}"
        return
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / "client_secret").is_file():
        values["client_secret"] = _read_secret(Path(credentials) / "client_secret", "client_secret")
        origins["client_secret"] = "$CREDENTIALS_DIRECTORY/client_secret"


def _read_secret(path: Path, key: str, origin: str | None = None) -> str:
    # client_secret_file's value (the path) is not shown, as no secret-named key's value
    # is: the secret itself may have been pasted there by mistake. systemd's credential
    # path ($CREDENTIALS_DIRECTORY) is coderd's own choice, so it is shown.
    shown = "the file it names" if key == "client_secret_file" else str(path)
    source = f" (from {origin})" if origin else ""
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(_one_line(f"config: {key}: cannot read {shown}: {reason}{source}")) from None
    if not secret:
        raise ConfigError(f"config: {key}: {shown} is empty{source}")
    return secret


def _describe(exc: ValidationError, values: dict[str, Any], origins: dict[str, str]) -> str:
    problems = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not key:
            key, _, message = message.partition(": ")
        known = error["type"] != "extra_forbidden"
        if not known:
            close = difflib.get_close_matches(key, Settings.model_fields, n=1)
            message = "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
        problems.append(f"{key}: {mask_userinfo(message)}{_source(key, values, origins, show_value=known)}")
    return _one_line("config: " + "; ".join(problems))


def _source(key: str, values: dict[str, Any], origins: dict[str, str], *, show_value: bool = True) -> str:
    """` (got <value>, from <file or variable>)`. The value is left out for an unknown key
    and for any key whose name looks secret-bearing; a URL's password is masked."""
    if key not in origins:
        return ""
    if not show_value or SECRET_KEY_NAME.search(key):
        return f" (from {origins[key]})"
    value = values.get(key)
    return f" (got {mask_userinfo(repr(value))}, from {origins[key]})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
