"""Structured logs (structlog, JSON lines by default) that never carry a secret.

Every event passes a redactor last before rendering: registered secrets (client secret,
tokens) are replaced wherever they appear, URL passwords are masked, and presigned
URLs lose their query string. Standard-library log records (aiohttp, aio-pika, ...) are
forwarded into the same pipeline, so they are redacted and rendered alike, and a message
that repeats (asyncio's "socket.accept() out of system resource" when file descriptors run
out, aiohttp's error for every connection) is logged at most once per REPEAT_INTERVAL with
a count of what was held back, so that a flood cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6  # masking shorter values would mangle ordinary words
ROTATING_SECRETS_KEPT = 16  # expired tokens need not be masked for ever
REPEAT_INTERVAL = 60.0  # seconds: a repeating library message is logged at most once per interval
REPEAT_KEYS_KEPT = 512  # distinct messages followed at once (the oldest is let go first)

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


@dataclass
class _Window:
    opened: float  # when the line that opened it was let through (or the last report)
    last_seen: float
    sample: str
    held: int = 0
    timer: asyncio.TimerHandle | None = None


class RepeatThrottle:
    """Lets a key through at most once per `interval`, counting what it holds back.

    The first occurrence of a key is let through and opens a window of `interval`
    seconds; repeats inside the window are held back and counted. When the window ends
    with repeats held back, `report(key, sample, count, seconds)` is called once and a new
    window opens, so a steady flood costs one line per interval; a window that ends with
    nothing held back (or after a whole interval of quiet) forgets the key, and its next
    occurrence is let through whole.

    Windows end on a timer of the running event loop when admit() is called from one
    (asyncio's and aiohttp's records are), so the count of a flood that stops is still
    reported; otherwise when the key is next seen. Thread-safe (one lock).
    """

    def __init__(self, report: Callable[[Hashable, str, int, float], None], interval: float = REPEAT_INTERVAL,
                 *, clock: Callable[[], float] = time.monotonic, keys_kept: int = REPEAT_KEYS_KEPT) -> None:
        self.report, self.interval, self.clock, self.keys_kept = report, interval, clock, keys_kept
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.RLock()

    def admit(self, key: Hashable, sample: str = "") -> bool:
        """True: log this one. False: held back (and counted)."""
        with self._lock:
            now = self.clock()
            window = self._windows.get(key)
            if window is not None and now - window.opened >= self.interval:
                self._end_window(key, now)  # the timer did not run (no loop): end it now
                window = self._windows.get(key)
            if window is not None:
                window.held += 1
                window.last_seen = now
                return False
            if len(self._windows) >= self.keys_kept:
                oldest = next(iter(self._windows))
                self._end_window(oldest, now, forget=True)
            self._windows[key] = window = _Window(opened=now, last_seen=now, sample=sample)
            self._schedule(key, window)
            return True

    def close(self) -> None:
        """Report what is held back, cancel the timers and forget every key."""
        with self._lock:
            now = self.clock()
            for key in list(self._windows):
                self._end_window(key, now, forget=True)

    def _schedule(self, key: Hashable, window: _Window) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the window ends when the key is next seen
            return
        window.timer = loop.call_later(max(0.0, window.opened + self.interval - self.clock()),
                                       self._on_timer, key)

    def _on_timer(self, key: Hashable) -> None:
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.timer = None
                self._end_window(key, self.clock())

    def _end_window(self, key: Hashable, now: float, *, forget: bool = False) -> None:
        window = self._windows[key]
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        held, window.held = window.held, 0
        if held:
            try:
                self.report(key, window.sample, held, now - window.opened)
            except Exception:  # noqa: BLE001 - a report must never break the caller's logging
                sys.stderr.write("coderd: could not report repeated log lines\n")
        if forget or not held or now - window.last_seen >= self.interval:
            del self._windows[key]
        else:  # still repeating: a new window, held back like the last
            window.opened = now
            self._schedule(key, window)


_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")


def repeat_key(record: logging.LogRecord) -> tuple[str, int, str]:
    """(logger, level, message template): what makes two records "the same message".
    The template is the record's format string (its first line; numbers and addresses
    masked, as asyncio writes fds and ids into the text itself), or the formatted
    message when the format string is nothing but placeholders ("%s")."""
    template = str(record.msg)
    if record.args and len(_PLACEHOLDER.sub("", template).strip()) < 3:
        template = record.getMessage()
    first_line = template.split("\n", 1)[0][:200]
    return record.name, record.levelno, _NUMBERS.sub("#", first_line)


def _report_repeats(key: Hashable, sample: str, count: int, seconds: float) -> None:
    name, level, _template = key  # type: ignore[misc]
    # At the level of what was held back (a broker client's is already capped at warning).
    structlog.get_logger(name).log(level, "log_repeats_suppressed", message=sample, count=count,
                                   seconds=round(seconds, 1))


_BROKER_CLIENTS = ("aiormq", "aio_pika")


class _ForwardToStructlog(logging.Handler):
    """Sends standard-library records through the structlog pipeline (redactor included),
    each distinct message at most once per REPEAT_INTERVAL (`throttle`)."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = RepeatThrottle(_report_repeats)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if not self.throttle.admit(repeat_key(record), message.split("\n", 1)[0][:200]):
                return
            logger = structlog.get_logger(record.name)
            # The broker client reports every connection it loses (warnings and errors, with
            # tracebacks): a cut is expected, recovered from, and logged once by coderd itself
            # (broker_connection_lost), so the client's own lines come as bare warnings.
            if record.name.split(".")[0] in _BROKER_CLIENTS:
                logger.log(min(record.levelno, logging.WARNING), message)
            else:
                logger.log(record.levelno, message, exc_info=record.exc_info or False)
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
    # What the previous configuration held back is reported to its own stream; a fresh
    # throttle follows the new one.
    _stdlib_handler.throttle.close()
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
    _stdlib_handler.throttle = RepeatThrottle(_report_repeats)
    root = logging.getLogger()
    if _stdlib_handler not in root.handlers:
        root.addHandler(_stdlib_handler)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; `name` is logged as the `logger` field."""
    return structlog.get_logger(name) if name else structlog.get_logger()
