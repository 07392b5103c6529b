"""The git smart-HTTP request validator (core/gitpath.py): method, raw request-target,
Content-Type, and the host-form rewrite from the Host header.

Input: byte 0 picks the method and whether a Content-Type is sent; the rest, read as
latin-1, is ``target \\n host-header \\n content-type``.
Invariants: only RequestRefused with a known Reason escapes; an accepted request names a
configured host and GitHub-valid owner/repo, its upstream path has no ``..``, ``//``, ``%``
or ``\\``, and its canonical ``/git/`` target parses back to the same request.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from airlock.core.gitpath import (
        Endpoint,
        GitRequest,
        Reason,
        RequestRefused,
        Service,
        host_form_target,
        parse_git_request,
    )

from _harness import main

_HOSTS = frozenset({"github.com", "ghe.example.com"})
_METHODS = ("GET", "POST", "PUT", "get", "HEAD", "")
_REASONS = frozenset(r.value for r in Reason)
_OWNER = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _parse(method: str, target: str, content_type: str | None) -> GitRequest | None:
    try:
        return parse_git_request(method, target, content_type, _HOSTS)
    except RequestRefused as exc:
        assert exc.reason in _REASONS, exc.reason
        return None


def check(data: bytes) -> bool:
    if not data:
        return False
    method = _METHODS[data[0] % len(_METHODS)]
    target, _, rest = data[1:].decode("latin-1").partition("\n")
    host, _, content_type = rest.partition("\n")
    rewritten = host_form_target(target, host if data[0] & 0x40 else None, _HOSTS)
    assert isinstance(rewritten, str)
    assert rewritten == target or rewritten == f"/git/{rewritten.split('/')[2]}{target}"
    request = _parse(method, rewritten, content_type if data[0] & 0x80 else None)
    if request is None:
        return False
    assert request.host in _HOSTS
    assert _OWNER.issuperset(request.owner) and 1 <= len(request.owner) <= 39
    assert not request.repo.lower().endswith(".git") and ".." not in request.repo
    path = request.upstream_path()
    assert path.startswith(f"/{request.owner}/{request.repo}.git/")
    assert not any(s in path for s in ("..", "//", "%", "\\", "?", "#"))
    assert request.is_write == (request.service is Service.RECEIVE_PACK)
    if request.endpoint is Endpoint.INFO_REFS:
        canonical = f"/git/{request.host}{path.removesuffix('.git/info/refs')}/info/refs"
        canonical += f"?{request.upstream_query()}"
        again = _parse("GET", canonical, None)
    else:
        canonical = f"/git/{request.host}/{request.owner}/{request.repo}/{request.service}"
        again = _parse("POST", canonical, f"application/x-{request.service}-request")
    assert again == request, (canonical, again, request)
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
