"""Structured logs (structlog, JSON lines by default) that never carry a secret.

Every event passes a redactor last before rendering: registered secrets (client secret,
tokens) are replaced wherever they appear, URL passwords are masked, and presigned
URLs lose their query string. Standard-library log records (aiohttp, aio-pika, ...) are
forwarded into the same pipeline, so they are redacted and rendered alike.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import deque
from pathlib import PurePath
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6  # masking shorter values would mangle ordinary words
ROTATING_SECRETS_KEPT = 16  # expired tokens need not be masked for ever

# scheme://user:password@ -- the password runs to the last "@" before the path, as
# urllib parses it, so a password containing "@" is masked whole.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*@", re.IGNORECASE)
_PRESIGNED_URL = re.compile(
    r"""(https?://[^\s?#"'<>]+)\?[^\s#"'<>]*?(?:X-Amz-Signature|X-Amz-Credential|Signature=)[^\s#"'<>]*""",
    re.IGNORECASE,
)

_lasting_secrets: set[str] = set()
_rotating_secrets: deque[str] = deque(maxlen=ROTATING_SECRETS_KEPT)
_secrets: tuple[str, ...] = ()  # longest first: a secret containing another is masked whole


def register_secret(value: str | None, *, rotating: bool = False) -> None:
    """Never log this value. `rotating=True` is for values that expire (access tokens):
    only the most recent ROTATING_SECRETS_KEPT of those are kept, so a daemon that runs
    for months does not check every string against every token it ever had."""
    global _secrets
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    if rotating:
        if value not in _rotating_secrets:
            _rotating_secrets.append(value)
    else:
        _lasting_secrets.add(value)
    _secrets = tuple(sorted(_lasting_secrets.union(_rotating_secrets), key=len, reverse=True))


def mask_url_passwords(text: str) -> str:
    """`amqp://user:pass@host` -> `amqp://user:***@host`, for every URL in the text."""
    return _URL_PASSWORD.sub(r"\1***@", text) if "://" in text else text


def redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _PRESIGNED_URL.sub(r"\1?" + REDACTED, _URL_PASSWORD.sub(r"\1***@", text))
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item) for item in value)
    # Any other object would be rendered as text by the renderer, which runs after us:
    # render it here so that its text is redacted too.
    return redact_text(str(value) if isinstance(value, PurePath) else repr(value))


def redact_event(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: must run after format_exc_info, right before the renderer."""
    return {key: _redact(value) for key, value in event_dict.items()}


class _NamedWriteLogger(structlog.WriteLogger):
    """Carries the name given to get_logger(), for _add_logger_name."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    name = getattr(logger, "name", None)
    if name:
        event_dict["logger"] = name
    return event_dict


class _ForwardToStructlog(logging.Handler):
    """Sends standard-library records through the structlog pipeline (redactor included)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            logger.log(record.levelno, record.getMessage(), exc_info=record.exc_info or False)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # The default prints the record's message and arguments: they may hold secrets.
        sys.stderr.write(f"coderd: could not log a {record.levelname} record from {record.name}\n")


_stdlib_handler = _ForwardToStructlog()


def configure_logging(log_format: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Log to `stream` (default: stderr). May be called again: the last call wins."""
    output = stream if stream is not None else sys.stderr
    min_level = logging.getLevelNamesMapping().get(level.upper())
    if min_level is None:
        raise ValueError(f"unknown log level {level!r}")
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    elif log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=output.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    else:
        raise ValueError(f"unknown log format {log_format!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda name=None, *_: _NamedWriteLogger(output, name),
        # Not cached, so that module-level loggers follow a later configure_logging().
        cache_logger_on_first_use=False,
    )
    # Libraries' own INFO chatter (e.g. one aiohttp access line per /healthz probe) is
    # left out: their warnings and errors are what an operator needs.
    _stdlib_handler.setLevel(max(min_level, logging.WARNING))
    root = logging.getLogger()
    if _stdlib_handler not in root.handlers:
        root.addHandler(_stdlib_handler)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; `name` is logged as the `logger` field."""
    return structlog.get_logger(name) if name else structlog.get_logger()
