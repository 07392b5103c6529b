"""Pull requests from a real sandbox: Debian's gh, curl and Python, unchanged, through the gateway.

The sandbox clones and pushes as usual, then uses the GitHub API with the tools in the image.
``api.github.com`` is never reached: the gateway's egress proxy ends TLS there with the
interception CA and relays what the grants allow to the GitHub API double on the host. The
sandbox holds only its per-session ``GH_TOKEN``; the upstream token is nowhere inside.
A certificate for any other name, even one signed with the interception CA's own key, is
refused by the sandbox's tools (the CA's name constraints), shown by a decoy on the host.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airlock.testing.ports import free_port
from tests.e2e.conftest import E2E, GIT_TIMEOUT, Sandboxes, remove_everything_of, sandbox_config
from tests.e2e.egress_decoys import DecoyWeb
from tests.world import HOST, TOKEN, ApiWorld, World

pytestmark = E2E
POOL = "10.216.144.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)
OWNER = "octo"
FORGED = "forged.decoy.test"  # a name outside the interception CA's constraints
DECOY_PORT = free_port()
GIT = f"timeout {GIT_TIMEOUT} git"
GH = f"timeout {GIT_TIMEOUT * 2} gh"
# Python's standard library as a client: urllib with the default trust (SSL_CERT_FILE).
PY_CLIENT = (
    "import json, os, urllib.request as u; "
    'r = u.Request("https://api.github.com/repos/{repo}", '
    'headers={{"Authorization": "token " + os.environ["GH_TOKEN"]}}); '
    'print("python:", json.load(u.urlopen(r, timeout=20))["full_name"])'
)


@pytest.fixture(scope="module")
def sbx_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The module's world: the conftest's, with the GitHub API double as the upstream's API
    and one allowlisted decoy name on the host for the name-constraint test."""
    extra = (
        f'allow_hosts = ["{FORGED}"]\n'
        f"\n[egress]\nconnect_ports = [443, {DECOY_PORT}]\n"
        f'[[egress.static]]\nname = "{FORGED}"\naddresses = ["127.0.0.1"]\nallow_private = true\n'
    )
    w = ApiWorld(
        tmp_path_factory.mktemp("api-world"),
        config_extra=sandbox_config(POOL, extra),
        api_extra='title_prefix = "[agent] "',
    )
    w.start()
    yield w
    remove_everything_of(w)
    w.stop()


def _repo(w: World, name: str) -> str:
    w.make_repo(OWNER, name, files={"README.md": b"# hello\n"})
    return f"{OWNER}/{name}"


def test_gh_opens_views_lists_and_comments_from_a_sandbox(
    sandboxes: Sandboxes, sbx_world: World
) -> None:
    w = sbx_world
    assert isinstance(w, ApiWorld)
    repo = _repo(w, "app")
    script = f"""
    set -e
    git config --global user.name agent && git config --global user.email a@example.com
    {GIT} clone -q https://github.com/{repo} /tmp/w && cd /tmp/w
    git checkout -qb agent/x && git commit -q --allow-empty -m "agent work"
    {GIT} push -q origin agent/x
    {GH} pr create --title T --body B --head agent/x --base main
    {GH} pr view 1 --json number,title,state,headRefName
    {GH} pr list
    {GH} pr comment 1 --body C
    if {GH} pr merge 1 --merge 2>/tmp/merge.txt; then echo MERGED; fi
    echo "merge: $(cat /tmp/merge.txt)"
    curl -sS -H "Authorization: token $GH_TOKEN" https://api.github.com/repos/{repo}/pulls/1 \\
      | python3 -c 'import json,sys; print("curl:", json.load(sys.stdin)["title"])'
    python3 -c {shlex.quote(PY_CLIENT.format(repo=repo))}
    case "$GH_TOKEN" in airlock_api_*) echo TOKEN-IS-SESSION-TOKEN;; esac
    echo ALL-OK
    """
    r = sandboxes.run(script, [f"{HOST}/{repo}:write"], timeout=240)
    assert r.code == 0, r.output
    assert "ALL-OK" in r.output and "MERGED" not in r.output, r.output
    assert f"https://github.com/{repo}/pull/1" in r.output
    view = json.loads(next(line for line in r.output.splitlines() if line.startswith('{"')))
    assert view == {"number": 1, "title": "[agent] T", "state": "OPEN", "headRefName": "agent/x"}
    assert "merge: " in r.output and "airlock:" in r.output.split("merge: ", 1)[1]
    assert "curl: [agent] T" in r.output and f"python: {repo}" in r.output
    assert "TOKEN-IS-SESSION-TOKEN" in r.output
    [pr] = w.api.pulls(OWNER, "app")
    assert (pr.title, pr.state, pr.merged) == ("[agent] T", "open", False)
    comments = [m for m in w.api.mutations if m.kind == "comment.create" and m.repo == repo]
    assert [m.detail["body"] for m in comments] == ["C"]
    assert TOKEN not in r.output


def test_the_upstream_token_is_not_in_the_sandbox_and_its_own_is_bound(
    sandboxes: Sandboxes, sbx_world: World
) -> None:
    repo = _repo(sbx_world, "bound")
    # The upstream token's middle, split so that this script does not carry it whole.
    a, b = TOKEN[4:12], TOKEN[12:20]
    script = f"""
    U="{a}""{b}"
    env | grep -q -- "$U" && echo UPSTREAM-IN-ENV
    grep -rqs -- "$U" /run/airlock /etc /home /tmp && echo UPSTREAM-IN-FILES
    test -r "$SSL_CERT_FILE" && grep -q "interception CA" "$SSL_CERT_FILE" && echo BUNDLE-OK
    echo "$GH_TOKEN"
    """
    sb = sandboxes.start("sleep 60", [f"{HOST}/{repo}:read"])
    try:
        _, out = sandboxes.exec(sb, script)
        assert "UPSTREAM-IN-ENV" not in out and "UPSTREAM-IN-FILES" not in out, out
        assert "BUNDLE-OK" in out, out
        token = out.strip().splitlines()[-1]
        assert token.startswith("airlock_api_")
        # Another sandbox, with its own live session, presenting this one's token.
        other = sandboxes.run(
            f'curl -sS -o /dev/null -w "%{{http_code}}" -H "Authorization: token {token}" '
            f"https://api.github.com/repos/{repo}",
            [f"{HOST}/{repo}:read"],
        )
        assert other.output.strip().endswith("401"), other.output
    finally:
        sandboxes.teardown(sb)


def _forged_context(ca_dir: Path, root: Path) -> ssl.SSLContext:
    """A server certificate for FORGED signed with the interception CA's own key."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FORGED)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(FORGED)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "forged.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "forged.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(root / "forged.pem", root / "forged.key")
    return ctx


def test_a_certificate_outside_the_name_constraints_is_refused_in_the_sandbox(
    sandboxes: Sandboxes, sbx_world: World, tmp_path: Path
) -> None:
    decoy = DecoyWeb(
        "127.0.0.1",
        DECOY_PORT,
        "FORGED-DECOY",
        _forged_context(sbx_world.state_dir / "intercept", tmp_path),
    )
    try:
        url = f"https://{FORGED}:{DECOY_PORT}/hello"
        script = f"""
        curl -sS --max-time 15 -o /dev/null {url} 2>/tmp/e; echo "strict=$?"; cat /tmp/e
        curl -sSk --max-time 15 {url}; echo " insecure=$?"
        python3 -c 'import urllib.request as u; u.urlopen("{url}", timeout=15)' 2>&1 \\
          | tail -1
        """
        r = sandboxes.run(script, [])
        assert "strict=60" in r.output, r.output  # curl: peer certificate cannot be verified
        # (control) the decoy is reachable: only the certificate check stops the request.
        assert "FORGED-DECOY" in r.output and " insecure=0" in r.output, r.output
        assert "permitted subtree violation" in r.output, r.output
        assert "CERTIFICATE_VERIFY_FAILED" in r.output, r.output
        assert decoy.snis.count(FORGED) >= 3
    finally:
        decoy.close()
    assert os.path.exists(sbx_world.state_dir / "intercept" / "ca.key")
