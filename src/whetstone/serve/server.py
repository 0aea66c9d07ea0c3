"""How uvicorn serves the app: `config()` is the one place its connection limits are set, for
`whetstone serve` and for the server in a background thread (`serve.background`) alike."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from whetstone.serve.settings import Settings


class RequestDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request.

    uvicorn closes a keep-alive connection that sits idle between requests, but not one that
    is opened and never sends a request, or sends part of one and stops: each such connection
    is held for good. Here a client has `request_timeout` seconds, from opening the connection
    or from the first byte of a later request, to send the whole request (headers and body);
    else the connection is closed. The deadline does not extend as bytes trickle in, and does
    not run while the response is being written (a long stream is not cut)."""

    request_timeout: float = 10.0  # set per server by `config()`
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._deadline = self.loop.call_later(self.request_timeout, self._expire)
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request is in: its handler's time is its own

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that sent no whole request in time")
            self.transport.close()


def config(app: Any, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    protocol = type(
        "RequestDeadlineProtocol",
        (RequestDeadlineProtocol,),
        {"request_timeout": settings.request_timeout_s},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        log_level="warning",
    )
