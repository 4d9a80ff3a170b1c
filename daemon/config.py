"""Configuration: a TOML file, overridden by CODERD_* environment variables, validated
once at start-up. A bad value stops the daemon with one line naming the key."""

from __future__ import annotations

import os
import sys
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

from .logs import mask_url_passwords

DEFAULT_CONFIG_PATH = Path("config/coderd.toml")
ENV_PREFIX = "CODERD_"
DAILY_QUOTA_BY_TIER = {"public": 1000, "partner": 10000}
SECRET_MASK = "***"


class ConfigError(Exception):
    """One line: `config: <key>: <problem>`."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    request_queue: str = Field("coding.requests", min_length=1)
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
        if self.api_url is None:
            if self.auth_url is not None:
                raise ValueError("api_url: required when auth_url is set (leave both unset for the emulator)")
            return self
        if self.auth_url is None:
            raise ValueError("auth_url: required when api_url is set")
        if not (info.context or {}).get("credentials_required", True):
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
                view[key] = mask_url_passwords(view[key])
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
    _resolve_client_secret(values, origins, environ)
    try:
        return Settings.model_validate(values, context={"credentials_required": credentials_required})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, values, origins)) from None


def settings_for_command(config_arg: str | None, *, credentials_required: bool = True) -> Settings:
    """Settings for a `coderd` command; a bad configuration exits 2 with its one line."""
    try:
        return load_settings(Path(config_arg) if config_arg else None, credentials_required=credentials_required)
    except ConfigError as exc:
        print(f"coderd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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
        values["client_secret"] = _read_secret(Path(secret_file), "client_secret_file")
        origins["client_secret"] = secret_file
        return
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / "client_secret").is_file():
        values["client_secret"] = _read_secret(Path(credentials) / "client_secret", "client_secret")
        origins["client_secret"] = "$CREDENTIALS_DIRECTORY/client_secret"


def _read_secret(path: Path, key: str) -> str:
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(_one_line(f"config: {key}: cannot read {path}: {reason}")) from None
    if not secret:
        raise ConfigError(f"config: {key}: {path} is empty")
    return secret


def _describe(exc: ValidationError, values: dict[str, Any], origins: dict[str, str]) -> str:
    problems = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not key:
            key, _, message = message.partition(": ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{key}: {message}{_source(key, values, origins)}")
    return _one_line("config: " + "; ".join(problems))


def _source(key: str, values: dict[str, Any], origins: dict[str, str]) -> str:
    """` (got <value>, from <file or variable>)`, the value hidden for secrets."""
    if key not in origins:
        return ""
    if key == "client_secret":  # its value never appears in an error message
        return f" (from {origins[key]})"
    value = values.get(key)
    shown = mask_url_passwords(value) if isinstance(value, str) else value
    return f" (got {shown!r}, from {origins[key]})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
