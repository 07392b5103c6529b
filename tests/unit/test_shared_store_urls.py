"""The shared store's URL as messages and the audit log show it."""

from __future__ import annotations

from airlock.gateway.shared_store import shown


def test_a_store_url_is_shown_without_its_password() -> None:
    assert shown("redis://:hunter2@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert shown("rediss://user:hunter2@store.example.com/1") == (
        "rediss://user:***@store.example.com/1"
    )
    assert shown("redis://10.0.0.5:6379/0") == "redis://10.0.0.5:6379/0"


def test_a_password_given_as_a_query_parameter_is_masked_too() -> None:
    got = shown("redis://10.0.0.5:6379/0?password=hunter2&db=1")
    assert "hunter2" not in got and "password=***" in got and "db=1" in got
