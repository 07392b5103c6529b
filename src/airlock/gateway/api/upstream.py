"""Calls to an upstream's real GitHub API, always with the upstream's own credential.

One aiohttp client session per upstream, so connections to the API are reused. Besides
relaying an allowed request (:meth:`UpstreamApi.open`), the relay asks three things of its
own: the GraphQL node id of a granted repository (to check a ``createPullRequest``'s
``repositoryId``), the pull request a create made (to remember it as the session's own), and
adding the configured labels to it. None of these follow redirects.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from airlock.config import UpstreamConfig

__all__ = ["UpstreamApi", "UpstreamApiError"]

API_VERSION = "2022-11-28"
_USER_AGENT = "airlock-gateway"


class UpstreamApiError(Exception):
    pass


class UpstreamApi:
    def __init__(
        self, upstream: UpstreamConfig, *, connect_timeout: float, read_timeout: float
    ) -> None:
        self.upstream = upstream
        self.rest_url = upstream.api_rest_url
        self.graphql_url = upstream.api_graphql_url
        cafile = upstream.api.ca_file or upstream.ca_file
        self._ssl = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._client: aiohttp.ClientSession | None = None

    def client(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,  # bytes are relayed as the API sent them
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
                skip_auto_headers=("User-Agent",),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def url_for(self, target: str, graphql: bool) -> str:
        return self.graphql_url if graphql else self.rest_url + target

    async def open(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> aiohttp.ClientResponse:
        """Send one relayed request; the caller reads and releases the response.

        ``url`` goes out byte for byte as the policy saw it (``encoded=True``: no quoting
        or normalising here that could make the upstream read another path)."""
        return await self.client().request(
            method,
            URL(url, encoded=True),
            headers=dict(headers),
            data=body if body else None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "Content-Type"),
        )

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"token {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": _USER_AGENT,
        }

    async def _json(self, method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = self._headers(token)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.client().request(
                method, url, headers=headers, data=data, allow_redirects=False
            ) as resp:
                raw = await resp.content.read(4 * 1024 * 1024)
                try:
                    return resp.status, json.loads(raw) if raw else None
                except ValueError:
                    return resp.status, None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamApiError(f"{type(exc).__name__}: {exc}") from None

    async def repository_node_id(self, token: str, owner: str, name: str) -> str | None:
        status, data = await self._json(
            "GET", f"{self.rest_url}/repos/{quote(owner, safe='')}/{quote(name, safe='')}", token
        )
        if status == 200 and isinstance(data, dict) and isinstance(data.get("node_id"), str):
            return str(data["node_id"])
        return None

    async def find_pull(
        self, token: str, owner: str, name: str, head: str, base: str
    ) -> tuple[int, str] | None:
        """The open pull request from ``owner:head`` into ``base``: (number, node id)."""
        url = (
            f"{self.rest_url}/repos/{quote(owner, safe='')}/{quote(name, safe='')}/pulls"
            f"?state=open&head={quote(owner + ':' + head, safe='')}"
            f"&base={quote(base, safe='')}&per_page=10"
        )
        status, data = await self._json("GET", url, token)
        if status != 200 or not isinstance(data, list):
            return None
        for pr in data:
            if (
                isinstance(pr, dict)
                and isinstance(pr.get("number"), int)
                and isinstance(pr.get("node_id"), str)
            ):
                return int(pr["number"]), str(pr["node_id"])
        return None

    async def add_labels(
        self, token: str, owner: str, name: str, number: int, labels: list[str]
    ) -> int:
        status, _ = await self._json(
            "POST",
            f"{self.rest_url}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
            f"/issues/{number}/labels",
            token,
            {"labels": labels},
        )
        return status
