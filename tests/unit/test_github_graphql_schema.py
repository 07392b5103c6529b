"""The API double's GraphQL schema: gh's own documents validate, and every root field has a
resolver (a mutation the double does not implement must never answer a silent null)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from graphql import build_schema, parse, validate

from airlock.testing.github_graphql import GitHubGraphQL, GraphQLFault, connection
from airlock.testing.github_graphql_schema import SDL
from airlock.testing.github_state import GitHubState

DOCUMENTS = Path(__file__).parent.parent / "data" / "gh_2_23_0_graphql_documents.json"
SCHEMA = build_schema(SDL)


def _documents() -> list[str]:
    docs = json.loads(DOCUMENTS.read_text())
    assert isinstance(docs, list) and len(docs) >= 30
    return [str(d) for d in docs]


@pytest.mark.parametrize("document", _documents(), ids=lambda d: d.split("(")[0].strip()[:60])
def test_gh_documents_validate(document: str) -> None:
    assert validate(SCHEMA, parse(document)) == []


def test_every_root_field_has_a_resolver() -> None:
    api = GitHubGraphQL(GitHubState(None, clock=lambda: 0.0))
    mutation = api.schema.mutation_type
    query = api.schema.query_type
    assert mutation is not None and query is not None
    assert set(mutation.fields) == set(api._mutation_root())
    assert set(query.fields) <= set(api._query_root())
    for name in (
        "createPullRequest",
        "updatePullRequest",
        "closePullRequest",
        "mergePullRequest",
        "addComment",
        "requestReviews",
        "deleteRef",
        "createRef",
        "updateBranchProtectionRule",
    ):
        assert name in mutation.fields


def test_unknown_fields_fail_validation_like_github() -> None:
    api = GitHubGraphQL(GitHubState(None, clock=lambda: 0.0))
    reply = api.execute(None, {"query": "{ viewer { login secret } }"})
    assert reply == {
        "errors": [
            {
                "locations": [{"line": 1, "column": 18}],
                "message": "Field 'secret' doesn't exist on type 'User'",
                "extensions": {"code": "undefinedField", "typeName": "User", "fieldName": "secret"},
            }
        ]
    }


def test_connections_page_like_github() -> None:
    items = list(range(5))
    page = connection(items, {"first": 2})
    assert page["nodes"] == [0, 1] and page["totalCount"] == 5
    assert page["pageInfo"]["hasNextPage"] is True
    rest = connection(items, {"first": 10, "after": page["pageInfo"]["endCursor"]})
    assert rest["nodes"] == [2, 3, 4] and rest["pageInfo"]["hasNextPage"] is False
    assert connection(items, {"last": 2})["nodes"] == [3, 4]
    with pytest.raises(GraphQLFault) as too_many:
        connection(items, {"first": 101})
    assert too_many.value.type == "EXCESSIVE_PAGINATION"
