"""The GitHub API decision for REST requests (core/api_policy.py decide_api).

Input: byte 0 picks the method and the session context; the rest, read as UTF-8 (with
surrogate escapes for the bytes that are not), is ``target \\n body``.
Invariants: decide_api never raises and never reaches its internal-error refusal; a refusal
has a documented status and an ``airlock:`` message; an allowed request goes upstream to the
target it named (the policy never re-spells a path, only lower-cases owner and name), about
a granted repository, with a re-serialised JSON body when it has one; the decision is
deterministic.
"""

from __future__ import annotations

import atheris
import graphql  # noqa: F401  (loaded first, so only airlock is instrumented, not graphql-core)

with atheris.instrument_imports():
    from _api import CONTEXTS, METHODS, decide

    from airlock.core.api_policy import Allow, ApiRequest

from _harness import main


def check(data: bytes) -> bool:
    if not data:
        return False
    method = METHODS[data[0] % len(METHODS)]
    ctx = CONTEXTS[(data[0] >> 4) % len(CONTEXTS)]
    text = data[1:].decode("utf-8", "surrogateescape")
    target, _, body = text.partition("\n")
    raw = body.encode("utf-8", "surrogateescape")
    request = ApiRequest(method, target, raw, "application/json")
    decision = decide(request, ctx)
    if not isinstance(decision, Allow):
        return False
    if decision.operation is None:  # REST, not GraphQL
        sent = target.removeprefix(ctx.rest_prefix)
        assert decision.upstream_target.lower() == sent.lower(), (decision, target)
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
