"""The GitHub API decision for GraphQL requests (core/api_graphql.py through decide_api):
the JSON envelope, the document, its variables and the rewrites.

Input: byte 0 picks the session context; the rest is the POST body sent to the GraphQL
endpoint.
Invariants: those of every API decision (no exception, no internal error, documented
refusals, granted repositories only, deterministic, strict JSON bodies). (That the canonical
body decides to itself again is decide_graphql's own check: an allowed request passed it.)
"""

from __future__ import annotations

import atheris
import graphql  # noqa: F401  (imported first: the GraphQL parser is not instrumented, the policy is)

with atheris.instrument_imports():
    from _api import CONTEXTS, decide

    from airlock.core.api_policy import Allow, ApiRequest

from _harness import main


def check(data: bytes) -> bool:
    if not data:
        return False
    ctx = CONTEXTS[data[0] % len(CONTEXTS)]
    request = ApiRequest("POST", ctx.graphql_path, data[1:], "application/json")
    decision = decide(request, ctx)
    if not isinstance(decision, Allow):
        return False
    assert decision.upstream_target == "/graphql" and decision.body is not None
    assert decision.operation is None or isinstance(decision.operation, str)
    return True


def TestOneInput(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    main(TestOneInput, check)
