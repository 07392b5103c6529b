"""GitHub Enterprise through the gateway: the API at HOST/api/v3 and HOST/api/graphql.

A second upstream, ``ghe.test``, whose API is the double's GHE layout. gh is told the host
the way a sandbox tells it (``GH_HOST``, ``GH_ENTERPRISE_TOKEN``), finds the repository from
the clone's remote (``https://ghe.test:PORT/owner/repo``, the host form) and reaches
``ghe.test:443`` only through the egress proxy, where the gateway ends TLS for that name and
serves ``/api/v3`` and ``/api/graphql`` from the session's grants; any other path there is
refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.testing.ports import free_port
from tests.github_cli import GH, bound_sandbox_env, clone_and_push, run
from tests.world import ApiWorld

pytestmark = pytest.mark.skipif(not Path(GH).exists(), reason="needs Debian's gh at /usr/bin/gh")

GHE = "ghe.test"
LISTEN = "127.0.0.83"
PROXY_PORT = free_port()
OWNER = "octo"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path_factory.mktemp("api-ghe"), gateway_extra=f"dns_port = {free_port()}\n")
    w.loop.run(w.upstream.start())  # its URL (port) goes into the second upstream's table
    w.config_extra = f"""
[[upstream]]
host = "{GHE}"
url = "{w.upstream.url}"
ca_file = "{w.tls.ca_cert}"
token_file = "{w.token_file}"
[upstream.api]
url = "{w.api.url}/api/v3"

[sandbox]
proxy_port = {PROXY_PORT}
"""
    w.write_config()
    w.start_gateway()
    w.control.add_listener(LISTEN)
    try:
        yield w
    finally:
        w.stop()


def test_gh_opens_a_pull_request_on_an_enterprise_host(gw: ApiWorld, tmp_path: Path) -> None:
    w = gw
    w.make_repo(OWNER, "ent", files={"README.md": b"# ent\n"})
    issued, env = bound_sandbox_env(
        w,
        [f"{GHE}/{OWNER}/ent:write"],
        tmp_path,
        listen=LISTEN,
        proxy_port=PROXY_PORT,
        enterprise_host=GHE,
    )
    assert issued["api"]["hosts"] == {"api.github.com": "github.com", GHE: GHE}
    work = tmp_path / "ent"
    clone_and_push(env, f"https://{GHE}/{OWNER}/ent", work, "agent/ghe")
    created = run(
        [
            GH,
            "pr",
            "create",
            "--title",
            "E",
            "--body",
            "B",
            "--head",
            "agent/ghe",
            "--base",
            "main",
        ],
        env,
        cwd=work,
    )
    assert created.returncode == 0, created.stderr
    [pr] = w.api.pulls(OWNER, "ent")
    assert (pr.title, pr.head_ref) == ("E", "agent/ghe")
    view = run([GH, "pr", "view", "1", "--json", "title"], env, cwd=work)
    assert view.returncode == 0 and '"title":"E"' in view.stdout, view
    lines = [e for e in w.audit_for(issued["session"]["id"]) if e.get("event") == "api"]
    assert {line["host"] for line in lines} == {GHE}
    assert any(line["route"] == "graphql mutation createPullRequest" for line in lines), lines
    # Anything but the API on that name is refused (the web UI, raw paths).
    curl = run(
        [
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            "-H", f"Authorization: token {issued['api_token']}",
            f"https://{GHE}/{OWNER}/ent",
        ],
        env,
    )  # fmt: skip
    assert curl.stdout.strip() in ("403", "404"), curl
    assert w.api.pulls(OWNER, "ent")[0].state == "open"
