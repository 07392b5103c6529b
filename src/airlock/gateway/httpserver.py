"""aiohttp's low-level HTTP server, with every answer the gateway's own.

Two changes to aiohttp's defaults, both so that what the gateway checks is what it sees:
request bodies arrive exactly as the client sent them (no automatic inflating: the proxy
decodes them itself, bounded, see core/requestbody.py), and a request aiohttp's parser
refuses gets the gateway's short error with a request id and an audit line, never aiohttp's
page quoting the offending bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

ErrorResponder = Callable[[web.BaseRequest, int, BaseException | None], web.Response]


class _GatewayRequestHandler(RequestHandler):
    def __init__(self, manager: GatewayHTTPServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._error_responder = manager.error_responder

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer is on the wire already; aiohttp closes the connection.
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        return self._error_responder(request, status, exc)


class GatewayHTTPServer(web.Server):
    """``web.Server`` whose connections use :class:`_GatewayRequestHandler`."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        error_responder: ErrorResponder,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, auto_decompress=False, **kwargs)
        self.error_responder = error_responder

    def __call__(self) -> RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, **self._kwargs)
