"""Config validation names the key and says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock.config import ConfigError, parse_config

UP = {"host": "github.com", "url": "https://github.com", "token_file": "/t"}


def _err(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, Path("x.toml"))
    return str(e.value)


def test_defaults() -> None:
    c = parse_config({"upstream": [UP]}, Path("x.toml"))
    assert c.gateway.git_port == 8443
    assert c.upstream_hosts == frozenset({"github.com"})
    assert c.sessions.idle_timeout == 3600


def test_durations_and_hosts_are_normalised() -> None:
    c = parse_config(
        {
            "sessions": {"idle_timeout": "15m", "lifetime": "1h30m"},
            "upstream": [dict(UP, host="GHE.Example.COM.")],
        },
        Path("x"),
    )
    assert c.sessions.idle_timeout == 900 and c.sessions.lifetime == 5400
    assert c.upstream_for("ghe.example.com") is not None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"upstream": [UP], "gateway": {"bogus": 1}}, "gateway.bogus: unknown key"),
        ({"upstream": [UP, UP]}, "listed twice"),
        ({"upstream": [dict(UP, url="https://user:pw@github.com")]}, "credentials in the URL"),
        ({"upstream": [dict(UP, url="ftp://github.com")]}, "https only"),
        ({"upstream": [dict(UP, host="1.2.3.4")]}, "IP address"),
        ({"upstream": []}, "upstream"),
        ({"upstream": [UP], "sandbox": {"pool": "10.0.0.0/33"}}, "sandbox.pool"),
        ({"upstream": [UP], "sandbox": {"memory": "lots"}}, "sandbox.memory"),
        ({"upstream": [UP], "sessions": {"max_requests": 0}}, "sessions.max_requests"),
        ({"upstream": [UP], "gateway": {"control_uids": "root"}}, "gateway.control_uids"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], needle: str) -> None:
    assert needle in _err(data)


def test_config_digest_is_checked_when_present(tmp_path: Path) -> None:
    import hashlib

    from airlock.config import load_config

    cfg = tmp_path / "airlock.toml"
    cfg.write_text(
        '[[upstream]]\nhost = "github.com"\nurl = "https://github.com"\ntoken_file = "/t"\n'
    )
    assert load_config(cfg).upstream_hosts == frozenset({"github.com"})
    digest = tmp_path / "airlock.toml.sha256"
    digest.write_text(hashlib.sha256(cfg.read_bytes()).hexdigest() + "  airlock.toml\n")
    assert load_config(cfg).upstream_hosts == frozenset({"github.com"})
    cfg.write_text(cfg.read_text().replace("github.com", "evil.example"))
    with pytest.raises(ConfigError, match="does not match"):
        load_config(cfg)


APP = {"app_id": 1, "private_key_file": "/k.pem", "installations": {"Acme": 7}}


def test_an_app_upstream_needs_no_token_file() -> None:
    up = {"host": "github.com", "url": "https://github.com", "app": APP}
    c = parse_config({"upstream": [up]}, Path("x.toml"))
    app = c.upstream[0].app
    assert app is not None and c.upstream[0].token_file is None
    assert app.installations == {"acme": 7}  # account names are case-insensitive
    assert app.api_url == "https://api.github.com" and app.revoke_interval == 15


@pytest.mark.parametrize(
    ("app", "needle"),
    [
        ({**APP, "api_url": "http://api.github.com"}, "must be an https URL"),
        ({**APP, "api_url": "https://u:p@api.github.com"}, "nothing else"),
        ({**APP, "installations": {}}, "installations"),
        ({**APP, "installations": {"bad/name": 7}}, "not a GitHub account name"),
        ({**APP, "installations": {"acme": 0}}, "positive integer"),
        ({**APP, "app_id": 0}, "app_id"),
        ({**APP, "workflows": True}, "unknown key"),
    ],
)
def test_app_errors_name_the_key(app: dict[str, object], needle: str) -> None:
    up = {"host": "github.com", "url": "https://github.com", "app": app}
    assert needle in _err({"upstream": [up]})


@pytest.mark.parametrize("with_token", [True, False])
def test_exactly_one_upstream_credential(with_token: bool) -> None:
    up: dict[str, object] = {"host": "github.com", "url": "https://github.com"}
    if with_token:
        up.update(token_file="/t", app=APP)
    assert "give exactly one of token_file or [upstream.app]" in _err({"upstream": [up]})
