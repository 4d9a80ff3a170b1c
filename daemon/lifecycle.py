"""One shape for every part of the daemon that starts and stops.

A component is built without IO (constructors only wire it to what it depends on), then
started; the daemon enters the components into one `AsyncExitStack` in dependency order,
so they stop in the reverse order, each awaited, whatever fails (see `service.py`).
"""

from __future__ import annotations


class Component:
    async def start(self) -> None:
        """Open what the component needs (connections, tasks); called once."""

    async def stop(self) -> None:
        """Close it again; every task it started is cancelled and awaited."""

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
