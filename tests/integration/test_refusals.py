"""Everything the gateway must refuse, each in its own test, against the real gateway."""

from __future__ import annotations

import datetime as dt
import re
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.rawhttp import client_context, get, send_raw
from tests.world import HOST, World


def _ctx(world: World, bundle_dir: Path | None) -> ssl.SSLContext:
    return client_context(bundle_dir, world.state_dir / "ca.pem")


def _info_refs(repo: str, service: str = "git-upload-pack") -> bytes:
    return get(f"/git/{HOST}/{repo}/info/refs?service={service}")


def test_no_client_certificate_is_refused_in_the_handshake(world: World) -> None:
    world.make_repo("acme", "nocert")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        send_raw(_ctx(world, None), world.port, _info_refs("acme/nocert"))
    # And stock git without the bundle's certificate gets nothing either.
    b = world.session(f"{HOST}/acme/nocert:read")
    text = b.gitconfig.read_text()
    b.gitconfig.write_text(re.sub(r"\tssl(Cert|Key) = .*\n", "", text))
    r = world.git(b, "ls-remote", f"https://{HOST}/acme/nocert")
    assert r.returncode != 0
    assert "refs/heads" not in r.stdout


def _foreign_client_cert(tmp: Path, session_id: str) -> tuple[Path, Path]:
    """A certificate for a real session id, signed by a CA the gateway does not trust."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airlock CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://airlock/session/{session_id}")]
            ),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cp, kp = tmp / "foreign.pem", tmp / "foreign.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cp, kp


def test_certificate_from_another_ca_is_refused(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "foreign")
    b = world.session(f"{HOST}/acme/foreign:read")
    cp, kp = _foreign_client_cert(tmp_path, b.session_id)
    ctx = client_context(None, world.state_dir / "ca.pem", cert=cp, key=kp)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        send_raw(ctx, world.port, _info_refs("acme/foreign"))
    # The real bundle works, so the refusal was the certificate's doing.
    assert send_raw(_ctx(world, b.dir), world.port, _info_refs("acme/foreign")).status == 200


def test_revoked_session_is_refused(world: World) -> None:
    world.make_repo("acme", "revoked")
    b = world.session(f"{HOST}/acme/revoked:read")
    assert world.git(b, "ls-remote", f"https://{HOST}/acme/revoked").returncode == 0
    world.control.revoke(b.session_id, "test")
    r = world.git(b, "ls-remote", f"https://{HOST}/acme/revoked")
    assert r.returncode != 0
    assert world.audit_for(b.session_id)[-1]["reason"] == "revoked"


def test_revocation_applies_to_the_next_request_on_a_kept_alive_connection(world: World) -> None:
    import http.client

    world.make_repo("acme", "keepalive")
    b = world.session(f"{HOST}/acme/keepalive:read")
    conn = http.client.HTTPSConnection("127.0.0.1", world.port, context=_ctx(world, b.dir))
    path = f"/git/{HOST}/acme/keepalive/info/refs?service=git-upload-pack"
    conn.request("GET", path)
    first = conn.getresponse()
    first.read()
    assert first.status == 200
    sock_before = conn.sock
    world.control.revoke(b.session_id, "test")
    conn.request("GET", path)
    second = conn.getresponse()
    second.read()
    assert conn.sock is sock_before, "the second request must reuse the same TLS connection"
    assert second.status == 403
    conn.close()


def test_expired_session_is_refused(world: World) -> None:
    world.make_repo("acme", "expiring")
    b = world.session(f"{HOST}/acme/expiring:read", ttl=2)
    assert world.git(b, "ls-remote", f"https://{HOST}/acme/expiring").returncode == 0
    time.sleep(2.5)
    r = world.git(b, "ls-remote", f"https://{HOST}/acme/expiring")
    assert r.returncode != 0
    assert "refs/heads" not in r.stdout


def test_idle_timeout_is_extended_only_by_successful_requests(world: World) -> None:
    world.make_repo("acme", "idle")
    busy = world.session(f"{HOST}/acme/idle:read", idle_timeout=3)
    failing = world.session(f"{HOST}/acme/idle:read", idle_timeout=3)
    url = f"https://{HOST}/acme/idle"
    for _ in range(4):  # 4 x 1 s: past the idle timeout, kept alive only by successes
        assert world.git(busy, "ls-remote", url).returncode == 0
        world.git(failing, "ls-remote", f"https://{HOST}/acme/not-granted")
        time.sleep(1)
    assert world.git(busy, "ls-remote", url).returncode == 0
    assert world.git(failing, "ls-remote", url).returncode != 0
    assert world.audit_for(failing.session_id)[-1]["reason"] == "idle_timeout"


def test_bound_session_refuses_other_source_addresses(world: World) -> None:
    world.make_repo("acme", "bound")
    b = world.session(f"{HOST}/acme/bound:read", bind_ip="127.0.0.2")
    ctx = _ctx(world, b.dir)
    wrong = send_raw(ctx, world.port, _info_refs("acme/bound"), source="127.0.0.1")
    assert wrong.status == 403
    assert world.audit_for(b.session_id)[-1]["reason"] == "wrong_source"
    right = send_raw(ctx, world.port, _info_refs("acme/bound"), source="127.0.0.2")
    assert right.status == 200


def _strip_id(body: bytes) -> bytes:
    return re.sub(rb"request id [0-9a-f]+", b"request id X", body)


def test_ungranted_repo_answers_exactly_like_a_missing_one(world: World) -> None:
    world.make_repo("acme", "secret-project")
    b = world.session(f"{HOST}/acme/granted-but-missing:write=agent/**,ff:main")
    ctx = _ctx(world, b.dir)
    before = len(world.upstream.requests)
    ungranted = send_raw(ctx, world.port, _info_refs("acme/secret-project"))
    assert len(world.upstream.requests) == before, "an ungranted repo must not reach upstream"
    missing = send_raw(ctx, world.port, _info_refs("acme/granted-but-missing"))
    assert len(world.upstream.requests) == before + 1
    assert ungranted.status == missing.status == 404
    assert _strip_id(ungranted.body) == _strip_id(missing.body)
    drop = {"x-airlock-request-id", "date"}
    assert {k: v for k, v in ungranted.headers.items() if k not in drop} == {
        k: v for k, v in missing.headers.items() if k not in drop
    }
    assert ungranted.headers["x-airlock-request-id"] != missing.headers["x-airlock-request-id"]
    reasons = [e["reason"] for e in world.audit_for(b.session_id)[-2:]]
    assert reasons == ["not_granted", "upstream_404"]
    # Stock git says the same thing for both.
    r1 = world.git(b, "ls-remote", f"https://{HOST}/acme/secret-project")
    r2 = world.git(b, "ls-remote", f"https://{HOST}/acme/granted-but-missing")
    assert r1.returncode == r2.returncode != 0
    e1 = _strip_id(r1.stderr.encode()).replace(b"secret-project", b"R")
    e2 = _strip_id(r2.stderr.encode()).replace(b"granted-but-missing", b"R")
    assert e1 == e2


def test_push_on_read_grant_is_refused(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "readonly")
    b = world.session(f"{HOST}/acme/readonly:read")
    work = tmp_path / "w"
    assert world.clone(b, "acme/readonly", work).returncode == 0
    (work / "f").write_text("x")
    world.git(None, "add", "f", cwd=work, check=True)
    world.git(None, "commit", "-qm", "x", cwd=work, check=True)
    before = len(world.upstream.requests)
    r = world.git(b, "push", "origin", "HEAD:main", cwd=work)
    assert r.returncode != 0
    assert not any("receive-pack" in q.path + q.query for q in world.upstream.requests[before:])
    assert world.audit_for(b.session_id)[-1]["reason"] == "read_only_grant"


PATH_TRICKS = [
    ("GET", f"/git/{HOST}/acme/tricks/../other/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks/%2e%2e/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme%2Ftricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme//tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks/info/refs/?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks/info/refs?service=git-upload-pack&x=1"),
    ("GET", f"/git/{HOST}/acme/tricks/info/refs?service=git-upload-pack&service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks/info/refs?service=git-upload-archive"),
    ("GET", f"/git/{HOST}/acme/tricks/info/refs"),
    ("GET", f"/git/{HOST}/acme/tricks/HEAD"),
    ("GET", f"/git/{HOST}/acme/tricks/objects/info/packs"),
    ("GET", f"/git/{HOST}/acme/tricks/.git/config"),
    ("GET", "/git/GITHUB.COM/acme/tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}:443/acme/tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/x@{HOST}/acme/tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks\\..\\x/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/-acme/tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/git/{HOST}/acme/tricks.git.git/info/refs?service=git-upload-pack"),
    ("GET", f"https://{HOST}/acme/tricks/info/refs?service=git-upload-pack"),
    ("GET", f"/{HOST}/acme/tricks/info/refs?service=git-upload-pack"),
    ("HEAD", f"/git/{HOST}/acme/tricks/info/refs?service=git-upload-pack"),
    ("PUT", f"/git/{HOST}/acme/tricks/git-receive-pack"),
    ("GET", f"/git/{HOST}/acme/tricks/git-upload-pack"),
    ("POST", f"/git/{HOST}/acme/tricks/git-upload-pack?x=1"),
    ("POST", f"/git/{HOST}/acme/tricks/info/refs?service=git-upload-pack"),
]


@pytest.mark.parametrize(("method", "target"), PATH_TRICKS)
def test_path_tricks_are_refused_without_reaching_upstream(
    world: World, method: str, target: str
) -> None:
    world.make_repo("acme", "tricks") if not (
        world.repos / "acme" / "tricks.git"
    ).exists() else None
    b = world.session(f"{HOST}/acme/tricks:write", f"{HOST}/acme/other:write")
    before = len(world.upstream.requests)
    headers = {"Content-Type": "application/x-git-upload-pack-request"} if method == "POST" else {}
    resp = send_raw(_ctx(world, b.dir), world.port, get(target, method=method, headers=headers))
    assert resp.status in (400, 404), resp
    assert len(world.upstream.requests) == before
    assert "x-airlock-request-id" in resp.headers or method == "HEAD"


def test_wrong_content_type_is_refused(world: World) -> None:
    world.make_repo("acme", "ctype") if not (world.repos / "acme" / "ctype.git").exists() else None
    b = world.session(f"{HOST}/acme/ctype:write")
    before = len(world.upstream.requests)
    for ctype in (
        "text/plain",
        "application/x-git-receive-pack-request",
        "application/x-git-upload-pack-request; charset=utf-8",
    ):
        resp = send_raw(
            _ctx(world, b.dir),
            world.port,
            get(
                f"/git/{HOST}/acme/ctype/git-upload-pack",
                method="POST",
                headers={"Content-Type": ctype},
                body=b"0000",
            ),
        )
        assert resp.status == 400
    assert len(world.upstream.requests) == before


def test_upstream_redirect_is_not_followed(world: World) -> None:
    world.make_repo("acme", "new-name")
    world.upstream.add_redirect("acme/old-name", "acme/new-name")
    b = world.session(f"{HOST}/acme/old-name:read")
    r = world.git(b, "ls-remote", f"https://{HOST}/acme/old-name")
    assert r.returncode != 0
    assert "refs/heads" not in r.stdout
    last = world.audit_for(b.session_id)[-1]
    assert last["reason"] == "upstream_redirect"
    assert "acme/new-name" in last["redirect_to"]
    assert not any("new-name" in q.path for q in world.upstream.requests)


def test_unconfigured_upstream_host_is_refused(world: World) -> None:
    from airlock.host.control_client import ControlError

    with pytest.raises(ControlError, match="not a configured upstream"):
        world.session("gitlab.com/acme/x:read")
    b = world.session(f"{HOST}/acme/x:read")
    before = len(world.upstream.requests)
    resp = send_raw(
        _ctx(world, b.dir),
        world.port,
        get("/git/gitlab.com/acme/x/info/refs?service=git-upload-pack"),
    )
    assert resp.status == 400
    assert len(world.upstream.requests) == before
    assert world.audit_for(b.session_id)[-1]["reason"] == "bad_request:unknown_host"
