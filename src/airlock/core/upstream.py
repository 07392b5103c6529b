"""The gateway's exchange with the upstream, as policy: which headers a request carries
there, and what an upstream answer becomes for the client. Pure; the proxy executes it."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass

from airlock.core.gitpath import Endpoint, GitRequest, Service

__all__ = ["RESPONSE_HEADERS", "Answer", "judge_upstream_answer", "upstream_headers"]

# What git servers answer; a 200 with anything else is not passed along.
_EXPECTED_RESPONSE_TYPE = {
    (Endpoint.INFO_REFS, Service.UPLOAD_PACK): "application/x-git-upload-pack-advertisement",
    (Endpoint.INFO_REFS, Service.RECEIVE_PACK): "application/x-git-receive-pack-advertisement",
    (Endpoint.RPC, Service.UPLOAD_PACK): "application/x-git-upload-pack-result",
    (Endpoint.RPC, Service.RECEIVE_PACK): "application/x-git-receive-pack-result",
}
# The only upstream response headers the client sees.
RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Cache-Control", "Expires", "Pragma")
_GIT_UA = re.compile(r"^git/[A-Za-z0-9._+-]{1,64}$")


def upstream_headers(
    req: GitRequest,
    method: str,
    token: str,
    client: Mapping[str, str],
    *,
    protocol_version: int,
    content_length: int | None,
) -> dict[str, str]:
    """The headers of the upstream request: the gateway's credential, and of the client's
    headers only what git needs, in the one form the gateway checked."""
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    if req.service is Service.UPLOAD_PACK:
        # A push's answers are read on the way (the advertisement loses push-cert, the
        # status report says which refs changed): they must come unencoded.
        headers["Accept-Encoding"] = "gzip"
    ua = client.get("User-Agent", "")
    headers["User-Agent"] = ua if _GIT_UA.match(ua) else "git/airlock"
    accept = client.get("Accept")
    if accept and len(accept) < 200 and accept.isprintable():
        headers["Accept"] = accept
    if req.service is Service.UPLOAD_PACK and protocol_version > 0:
        # Protocol v1/v2 negotiation is for fetches only, as git itself does.
        headers["Git-Protocol"] = f"version={protocol_version}"
    if method == "POST":
        headers["Content-Type"] = f"application/x-{req.service.value}-request"
        if req.service is Service.RECEIVE_PACK and content_length is not None:
            headers["Content-Length"] = str(content_length)
    return headers


@dataclass(frozen=True)
class Answer:
    """What the client gets instead of the upstream's answer."""

    status: int
    message: str
    reason: str
    hidden: bool = False  # the one answer a missing repository gets
    retry_after: str | None = None
    redirect_to: str | None = None


def judge_upstream_answer(
    req: GitRequest, status: int, headers: Mapping[str, str]
) -> Answer | None:
    """None when the upstream's answer is relayed; else the gateway's own answer."""
    if 300 <= status < 400:
        location = headers.get("Location", "")[:500]
        return Answer(
            502, "upstream redirect not followed", "upstream_redirect", redirect_to=location
        )
    if status in (401, 403, 404):
        # Missing, renamed-away or forbidden upstream: the same answer as an ungranted repo.
        return Answer(404, "repository not found", f"upstream_{status}", hidden=True)
    if status == 429:
        retry = headers.get("Retry-After", "60")
        return Answer(
            429,
            "upstream rate limited",
            "upstream_rate_limited",
            retry_after=retry if retry.isdigit() else "60",
        )
    if status != 200:
        return Answer(502, "upstream error", f"upstream_status_{status}")
    expected = _EXPECTED_RESPONSE_TYPE[(req.endpoint, req.service)]
    if headers.get("Content-Type", "").split(";")[0].strip().lower() != expected:
        return Answer(502, "upstream error", "upstream_bad_content_type")
    encoding = headers.get("Content-Encoding", "identity").lower()
    if req.service is Service.RECEIVE_PACK and encoding != "identity":
        return Answer(502, "upstream error", "upstream_encoded_push_answer")
    return None
