"""systemd's notify protocol (sd_notify(3), sd_watchdog_enabled(3)) without a dependency.

Under a Type=notify unit systemd sets NOTIFY_SOCKET (and WATCHDOG_USEC with WatchdogSec=);
anywhere else the notifier is disabled and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> None:
        """Send one datagram of newline-separated states, e.g. notify("READY=1", "STATUS=…").
        Never raises: a missing or full socket only loses the message."""
        if self._address is None or not states:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # never stall the event loop
            self._sock.sendto("\n".join(states).encode(), self._address)
        except OSError:
            pass

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds systemd allows between WATCHDOG=1 pings, or None when it expects none."""
        try:
            usec = int(self._watchdog_usec or "")
            if self._watchdog_pid and int(self._watchdog_pid) != os.getpid():
                return None  # the watchdog is meant for another process
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 else None

    async def watchdog(self) -> None:
        """Ping the watchdog every half interval, forever, from the event loop: if the loop
        stalls the pings stop and systemd restarts the service. Returns at once without one."""
        interval = self.watchdog_interval
        if not self.enabled or interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | None:
    """A filesystem path, or "@name" for Linux's abstract namespace; anything else is unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None
