"""Logs: JSON lines on the configured stream, with secrets, URL passwords and presigned
URL signatures never written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import datetime, timezone

import pytest
import structlog

from daemon import logs
from daemon.logs import configure_logging, get_logger, register_secret

SECRET = "tok-7f3a9c1e55d04b2a"
PRESIGNED = ("https://coder-batch.s3.ap-southeast-2.amazonaws.com/ops/42/input.jsonl"
             "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101"
             "&X-Amz-Expires=3600&X-Amz-Signature=d3adb33fcafe0123456789")


@pytest.fixture
def stream():
    output = io.StringIO()
    configure_logging("json", "info", stream=output)
    yield output
    structlog.reset_defaults()


def lines(output: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in output.getvalue().splitlines()]


def test_event_is_one_json_line_with_event_level_timestamp(stream):
    get_logger("coderd.test").info("consuming", queue="coding.requests")
    [event] = lines(stream)
    assert event["event"] == "consuming" and event["level"] == "info"
    assert event["queue"] == "coding.requests" and event["logger"] == "coderd.test"
    timestamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert timestamp.utcoffset() == timezone.utc.utcoffset(None)


def test_level_filters_events():
    output = io.StringIO()
    configure_logging("json", "warning", stream=output)
    try:
        get_logger().info("quiet")
        get_logger().warning("loud")
    finally:
        structlog.reset_defaults()
    assert [event["event"] for event in lines(output)] == ["loud"]


def test_registered_secret_never_appears(stream):
    register_secret(SECRET)
    log = get_logger()
    log.info(f"got {SECRET}", token=SECRET, nested={"headers": {"Authorization": f"Bearer {SECRET}"},
                                                    "list": [SECRET, (SECRET,)]})
    try:
        raise RuntimeError(f"refused token {SECRET}")
    except RuntimeError:
        log.exception("token_failed")
    text = stream.getvalue()
    assert SECRET not in text
    plain, failure = lines(stream)
    assert plain["token"] == "[REDACTED]"
    assert plain["nested"]["headers"]["Authorization"] == "Bearer [REDACTED]"
    assert "RuntimeError: refused token [REDACTED]" in failure["exception"]


def test_secret_inside_an_object_value_never_appears(stream):
    register_secret(SECRET)
    get_logger().warning("upstream_error", error=ValueError(f"bad {SECRET}"))
    assert SECRET not in stream.getvalue()


def test_short_values_are_not_registered(stream):
    register_secret("abc")
    get_logger().info("abcdef")
    assert lines(stream)[0]["event"] == "abcdef"


def test_longer_secret_containing_another_is_masked_whole(stream):
    register_secret("secret-1")
    register_secret("secret-1-and-more")
    get_logger().info("x", value="secret-1-and-more")
    assert lines(stream)[0]["value"] == "[REDACTED]"


def test_rotating_secrets_keep_only_the_most_recent():
    first = "rotating-token-0000"
    register_secret(first, rotating=True)
    assert "[REDACTED]" in logs.redact_text(first)
    for number in range(1, logs.ROTATING_SECRETS_KEPT + 1):
        register_secret(f"rotating-token-{number:04d}", rotating=True)
    assert logs.redact_text(first) == first
    assert logs.redact_text(f"rotating-token-{logs.ROTATING_SECRETS_KEPT:04d}") == "[REDACTED]"


@pytest.mark.parametrize("url, masked", [
    ("amqp://coderd:pw-in-url@rabbit1:5672/", "amqp://coderd:***@rabbit1:5672/"),
    ("amqps://coderd:p@ss-word@rabbit2/vhost", "amqps://coderd:***@rabbit2/vhost"),
    ("http://user:pw-in-url@proxy:3128", "http://user:***@proxy:3128"),
])
def test_url_password_is_masked(stream, url, masked):
    get_logger().info("connecting", url=url, message=f"cannot reach {url}, retrying")
    [event] = lines(stream)
    assert event["url"] == masked and event["message"] == f"cannot reach {masked}, retrying"


def test_url_without_password_is_untouched(stream):
    url = "http://127.0.0.1:9464/metrics?user=a@b.example"
    get_logger().info("listening", url=url)
    assert lines(stream)[0]["url"] == url


def test_presigned_url_signature_never_appears_but_host_and_path_do(stream):
    get_logger().info("uploading", url=PRESIGNED, error=f"PUT '{PRESIGNED}' failed")
    text = stream.getvalue()
    for leaked in ("d3adb33fcafe0123456789", "AKIAEXAMPLE", "X-Amz-Signature"):
        assert leaked not in text
    [event] = lines(stream)
    base = "https://coder-batch.s3.ap-southeast-2.amazonaws.com/ops/42/input.jsonl"
    assert event["url"] == f"{base}?[REDACTED]"
    assert event["error"] == f"PUT '{base}?[REDACTED]' failed"


def test_standard_library_records_are_redacted_json(stream):
    register_secret(SECRET)
    logging.getLogger("aiormq.connection").warning("connection to amqp://u:pw-lib@h/ lost (%s)", SECRET)
    [event] = lines(stream)
    assert event["logger"] == "aiormq.connection" and event["level"] == "warning"
    assert event["event"] == "connection to amqp://u:***@h/ lost ([REDACTED])"


def test_standard_library_records_follow_the_level():
    output = io.StringIO()
    configure_logging("json", "error", stream=output)
    try:
        logging.getLogger("aiohttp.server").warning("slow client")
        logging.getLogger("aiohttp.server").error("gave up")
    finally:
        structlog.reset_defaults()
    assert [event["event"] for event in lines(output)] == ["gave up"]


def test_the_broker_clients_lost_connections_are_bare_warnings(stream):
    """A cut is logged once by coderd (broker_connection_lost); the client's own errors
    about it come as warnings without their tracebacks."""
    try:
        raise ConnectionResetError("Connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("aiormq.connection").exception("Unexpected connection close")
    [event] = lines(stream)
    assert event["level"] == "warning" and event["event"] == "Unexpected connection close"
    assert "exception" not in event and "Traceback" not in json.dumps(event)


def test_console_format_is_redacted_too():
    output = io.StringIO()
    configure_logging("console", stream=output)
    try:
        register_secret(SECRET)
        get_logger().info("hello", token=SECRET)
    finally:
        structlog.reset_defaults()
    assert "hello" in output.getvalue() and SECRET not in output.getvalue()


def test_configure_logging_rejects_unknown_format_and_level():
    with pytest.raises(ValueError):
        configure_logging("xml", stream=io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("json", "chatty", stream=io.StringIO())


# --- repeats: a flood of one message is logged once per interval, with a count ----------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(stream, monkeypatch):
    """The forwarding handler's throttle on a clock the test moves (no event loop here,
    so windows end when their message is next seen)."""
    fake = FakeClock()
    monkeypatch.setattr(logs._stdlib_handler, "throttle", logs.RepeatThrottle(logs._report_repeats, 60, clock=fake))
    return fake


def accept_failed(fd: int) -> None:
    # As asyncio's default exception handler writes it: the details inside the text.
    logging.getLogger("asyncio").error(f"socket.accept() out of system resource\nsocket: <TransportSocket fd={fd}>")


def test_a_repeating_library_message_is_logged_once_per_interval_with_a_count(stream, clock):
    for fd in range(1000):
        accept_failed(fd)
        clock.now += 0.01
    [first] = lines(stream)
    assert first["event"] == "socket.accept() out of system resource\nsocket: <TransportSocket fd=0>"
    clock.now += 50.5  # 60 s since the first: what was held back is counted, and a new window opens
    accept_failed(7)
    [_, report] = lines(stream)
    assert report["event"] == "log_repeats_suppressed" and report["logger"] == "asyncio"
    assert report["level"] == "error" and report["count"] == 999
    assert report["message"] == "socket.accept() out of system resource" and report["seconds"] >= 60
    clock.now += 120  # quiet for a whole interval: the last one is reported, and then the message is new again
    accept_failed(8)
    assert [(e["event"], e.get("count")) for e in lines(stream)[2:]] == [
        ("log_repeats_suppressed", 1), ("socket.accept() out of system resource\nsocket: <TransportSocket fd=8>", None)]


def test_repeats_are_told_apart_by_logger_level_and_template(stream, clock):
    for _ in range(3):
        logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
        logging.getLogger("aiohttp.access").error("Error handling request from %s", "127.0.0.1")
        logging.getLogger("aiohttp.server").warning("Error handling request from %s", "127.0.0.1")
        logging.getLogger("aiohttp.server").error("Unhandled exception")
        # A format string of placeholders only is no template: the formatted text is.
        logging.getLogger("aiormq.connection").warning("%s", "connection lost")
        logging.getLogger("aiormq.connection").warning("%s", "reconnecting")
    assert len(lines(stream)) == 6


def test_a_flood_that_stops_is_still_counted_on_the_event_loop(stream, monkeypatch):
    monkeypatch.setattr(logs._stdlib_handler, "throttle", logs.RepeatThrottle(logs._report_repeats, 0.5))

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        for fd in range(1000):  # through asyncio's own exception handler, as the incident did
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(24, "Too many open files"), "fd": fd})
        await asyncio.sleep(0.6)  # the window ends on a timer: the count is written without a new record
        assert [e["event"] for e in lines(stream)][1:] == ["log_repeats_suppressed"]
        await asyncio.sleep(0.6)  # nothing more: the key is forgotten
        loop.call_exception_handler({"message": "socket.accept() out of system resource"})

    asyncio.run(flood())
    first, report, again = lines(stream)
    assert first["event"].startswith("socket.accept() out of system resource")
    assert "Too many open files" in first["exception"]
    assert report["count"] == 999 and report["message"] == "socket.accept() out of system resource"
    assert again["event"].startswith("socket.accept() out of system resource")


def test_the_throttle_follows_a_bounded_number_of_messages():
    reported = []
    throttle = logs.RepeatThrottle(lambda key, sample, count, seconds: reported.append((key, count)), 60,
                                   clock=FakeClock(), keys_kept=3)
    for key in range(10):
        assert throttle.admit(key)
        assert not throttle.admit(key)
    assert len(throttle._windows) == 3
    assert reported == [(key, 1) for key in range(7)]  # each let go with its count
    throttle.close()
    assert reported[7:] == [(7, 1), (8, 1), (9, 1)] and not throttle._windows
