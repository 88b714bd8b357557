"""Serving on sockets the daemon already bound: asyncio servers and Twisted ports.

The daemon binds every port first (possibly as root), drops privileges, then
hands each socket to its protocol's `start()`, which uses one of these.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

from .bridge import as_future


class AsyncioListener:
    """An asyncio server on a pre-bound socket; `sessions` lets close() wait for in-flight work."""

    def __init__(self, server: asyncio.base_events.Server) -> None:
        self.server = server
        self.sessions: set[Any] = set()

    @classmethod
    async def start(cls, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                    ssl_context: Any = None) -> "AsyncioListener":
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory, sock=sock, ssl=ssl_context,
                                          ssl_handshake_timeout=30 if ssl_context else None)
        return cls(server)

    async def close(self, timeout: float) -> None:
        self.server.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            close = getattr(session, "abort", None) or getattr(session, "close", None)
            if close:
                close()


class TwistedListener:
    """A Twisted port adopted from a pre-bound socket; tracks protocols to close them at shutdown."""

    def __init__(self, port: Any, protocols: set[Any]) -> None:
        self.port = port
        self.protocols = protocols

    @classmethod
    def adopt(cls, sock: socket.socket, factory: Any, tls_context_factory: Any = None) -> "TwistedListener":
        from twisted.internet import reactor

        protocols: set[Any] = getattr(factory, "live_protocols", set())
        if tls_context_factory is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(tls_context_factory, False, factory)
        port = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        sock.close()  # adoptStreamPort duplicated the descriptor
        return cls(port, protocols)

    async def close(self, timeout: float) -> None:
        await as_future(self.port.stopListening())
        deadline = asyncio.get_running_loop().time() + min(timeout, 2.0)
        for protocol in list(self.protocols):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.loseConnection()
        while self.protocols and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
