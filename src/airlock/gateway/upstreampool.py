"""Pooled HTTPS connections to an upstream that never carry anything after a surprise.

aiohttp returns a connection to its pool as soon as an answer's body has ended, and cancels
the request body still being written when that happens. An upstream that answers early (a
404 before reading a push) then has unread body bytes on a connection the next request will
use: it reads them as the start of that request, which carries the real credential
(request smuggling; tests/integration/test_upstream_connection_reuse.py). Here a connection
goes back to the pool only after a 200 answer to a request that was written whole; any
other ending closes it (the gateway reads no body but a 200's).
"""

from __future__ import annotations

import ssl

import aiohttp
from aiohttp.connector import Connection

__all__ = ["upstream_session"]


class _UpstreamResponse(aiohttp.ClientResponse):
    _ended_early = False

    def _response_eof(self) -> None:
        if self.status is None:
            # A short answer can end inside start(), before its status is set: decide there.
            self._ended_early = True
            return
        self._settle()

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        response = await super().start(connection)
        if self._ended_early:
            self._ended_early = False
            self._settle()
        return response

    def _settle(self) -> None:
        # ``_writer`` is the task writing the request body (aiohttp keeps it for
        # subclasses); done, or None, once the body is written whole.
        writer = self._writer
        if self.status != 200 or (writer is not None and not writer.done()):
            self.close()  # closes the connection; never released to the pool
            return
        super()._response_eof()


def upstream_session(ctx: ssl.SSLContext, limit: int = 256) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
        auto_decompress=False,  # bytes pass through untouched, encoding and all
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,  # never route the credential through an env-configured proxy
        response_class=_UpstreamResponse,
    )
