"""Limits on slow and idle clients, for servers bound beyond loopback.

Without them, a client could hold a connection forever: uvicorn arms no timer before a request's
headers are complete (200 connections sending half a header stayed open for good), and a handler
waits as long as a client takes to send its body. So:

- a connection's request headers must arrive within `header_timeout` of its first byte (or of the
  connection's start): else it is closed;
- each piece of a body must arrive within `body_timeout` of the one before: else the request ends with
  a 408 in the API's error shape;
- an idle keep-alive connection closes after `keepalive_timeout` (uvicorn's own timer), and at most
  `max_connections` connections and requests are served at once (beyond: 503, uvicorn's limit).
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle

from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request headers do not arrive in time."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class SlowBody(HTTPException):
    status_code = 408


def body_timeout(app: ASGIApp, seconds: float) -> ASGIApp:
    """Wrap an ASGI app so that waiting for the next piece of a request body takes at most `seconds`.
    Once the body is complete, `receive` (which handlers also use to notice a client leaving) is
    passed through untouched."""

    async def guarded_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_done = False

        async def guarded() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                raise SlowBody(detail=f"request body not received in time ({seconds:g} s between parts)") from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        await app(scope, guarded, send)

    return guarded_app
