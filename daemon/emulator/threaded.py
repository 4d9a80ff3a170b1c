"""The emulator on its own event loop in a background thread.

Tests that drive the daemon run the broker client on the test's loop; a busy loop there
would delay the emulator's arrival stamps and make it see throttle violations that never
happened on the wire. On its own loop the emulator stamps requests as they arrive.
"""

from __future__ import annotations

import asyncio
import threading

from .app import EmulatorServer
from .settings import Clock, EmulatorConfig


class ThreadedEmulatorServer:
    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None) -> None:
        self.server = EmulatorServer(config, clock=clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def __getattr__(self, name: str):
        return getattr(self.server, name)  # url, port, stats, faults, clock, emulator

    async def start(self) -> "ThreadedEmulatorServer":
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:  # surface start-up errors to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            await self.server.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="emulator", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)
        if failure:
            raise failure[0]
        return self

    async def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def __aenter__(self) -> "ThreadedEmulatorServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
