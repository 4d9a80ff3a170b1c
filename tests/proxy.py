"""A loopback TCP proxy for fault tests: it can cut every connection or stall them."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> int:
        """Drop every open connection at once (new ones are still accepted); returns how many."""
        pipes = list(self._pipes)
        for client, upstream in pipes:
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        self._pipes.clear()
        return len(pipes)

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's connections to the broker (the broker's peer_port),
        so that a caller can tell its connections apart in `rabbitmqctl list_connections`."""
        ports = set()
        for _, upstream in list(self._pipes):
            with contextlib.suppress(Exception):
                ports.add(upstream.get_extra_info("sockname")[1])
        return ports

    def stall(self) -> None:
        """Keep connections open but pass no more bytes, either way."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _accept(self, client_reader, client_writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        pipe = (client_writer, up_writer)
        self._pipes.add(pipe)
        await asyncio.gather(self._pump(client_reader, up_writer), self._pump(up_reader, client_writer),
                             return_exceptions=True)
        self._pipes.discard(pipe)
        for writer in pipe:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
