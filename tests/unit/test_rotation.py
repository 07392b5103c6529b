"""Rotation's pure parts and file handling: phases, the fingerprint overlap, re-issue, the
state directory's files through a rotation, bundle rewriting, the token file checks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from airlock.config import Config, parse_config
from airlock.core import rotation as core
from airlock.core import session as lc
from airlock.core.grants import Access, Grant
from airlock.core.rotation import Phase, RotationState, StartAction
from airlock.gateway import rotation as gw_rotation
from airlock.gateway.intercept_ca import InterceptAuthority
from airlock.gateway.pki import (
    CertificateAuthority,
    load_or_create_identity,
    make_csr,
    new_private_key,
)
from airlock.host.bundle import (
    API_CA_MARKER,
    BundleError,
    bundle_session_id,
    refresh_bundle,
    replace_file,
    with_api_ca,
    with_pins,
)
from airlock.host.rotation import refresh
from airlock.host.token_swap import (
    TokenSwapError,
    choose_upstream,
    new_token_problem,
    swap_token_file,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
G = (Grant("github.com", "acme", "repo", Access.READ),)

# --- core/rotation.py ---------------------------------------------------------------------------


def test_prepare_is_refused_while_an_overlap_runs_and_for_a_bad_overlap() -> None:
    running = RotationState(Phase.OVERLAP, 60, 0.0, 100.0)
    assert "still running" in (core.prepare_refusal(running, 60, 50.0) or "")
    assert core.prepare_refusal(running, 60, 100.0) is None  # ended, its timer not yet run
    assert core.prepare_refusal(RotationState(), 0.5, 0.0) is not None
    assert core.prepare_refusal(RotationState(), 8 * 24 * 3600, 0.0) is not None
    assert core.prepare_refusal(RotationState(), 600, 0.0) is None


def test_a_prepared_rotation_prepared_again_keeps_its_start() -> None:
    p = core.prepared(RotationState(), 60, 10.0)
    assert p.phase is Phase.PREPARED and p.prepared_at == 10.0
    assert core.prepared(p, 30, 20.0).prepared_at == 10.0
    assert core.commit_refusal(RotationState()) is not None
    assert core.commit_refusal(p) is None


def test_the_overlap_runs_from_the_commit() -> None:
    c = core.committed(core.prepared(RotationState(), 60, 10.0), 15.0)
    assert c.phase is Phase.OVERLAP and c.overlap_until == 75.0
    assert not core.overlap_ended(c, 74.9)
    assert core.overlap_ended(c, 75.0)
    assert core.previous_cert_deadline(c, 1e9) == 75.0
    assert core.previous_cert_deadline(c, 50.0) == 50.0  # the session ends first


def test_a_prepared_rotation_sets_no_deadline_but_the_sessions_end() -> None:
    # A rotation left prepared (rotate ca failed after the prepare) must not turn the
    # previous certificate, the one every bundle not yet rewritten holds, into
    # WRONG_CERTIFICATE some time later: until the commit only the session's end bounds it.
    p = core.prepared(RotationState(), 60, 10.0)
    assert core.previous_cert_deadline(p, 4e9) == 4e9


def test_what_a_starting_gateway_does() -> None:
    c = RotationState(Phase.OVERLAP, 60, 0.0, 100.0)
    assert core.on_start(c, 50.0, True) is StartAction.COMPLETE_COMMIT
    assert core.on_start(c, 50.0, False) is StartAction.WAIT
    assert core.on_start(c, 100.0, False) is StartAction.FINISH
    assert core.on_start(RotationState(), 0.0, True) is StartAction.NOTHING
    assert RotationState.from_json(json.loads(json.dumps(c.to_json()))) == c


# --- the fingerprint overlap (core/session.py) -------------------------------------------------


def _session() -> lc.Session:
    s = lc.create_session(grants=G, now=0.0, limits=lc.Limits(10_000, 100_000, 10, 1000))
    return dataclasses.replace(s, cert_fingerprint="new")


@pytest.mark.parametrize(
    ("presented", "until", "now", "refused"),
    [
        ("new", 0.0, 10.0, False),
        ("old", 20.0, 10.0, False),  # inside the overlap
        ("old", 20.0, 20.0, True),  # at its end
        ("old", 20.0, 30.0, True),
        ("other", 20.0, 10.0, True),  # any other certificate, overlap or not
        (None, 20.0, 10.0, True),
    ],
)
def test_the_previous_certificate_is_accepted_only_until_the_overlap_ends(
    presented: str | None, until: float, now: float, refused: bool
) -> None:
    s = dataclasses.replace(_session(), previous_cert_fingerprint="old", previous_cert_until=until)
    got = lc.check_usable(s, now=now, source_ip="127.0.0.1", cert_fingerprint=presented)
    assert (got is lc.Refusal.WRONG_CERTIFICATE) is refused


def test_old_session_records_load_without_the_rotation_fields() -> None:
    d = _session().to_json()
    for k in ("client_cert_pem", "previous_cert_fingerprint", "previous_cert_until"):
        d.pop(k)
    s = lc.Session.from_json(d)
    assert s.client_cert_pem is None and s.previous_cert_until == 0.0


# --- pki: re-issue for the same key -------------------------------------------------------------


def test_reissue_keeps_the_key_and_refuses_another_sessions_certificate() -> None:
    old, new = CertificateAuthority.generate(NOW), CertificateAuthority.generate(NOW)
    key = new_private_key()
    cert = old.issue_session(make_csr(key), "s-1", NOW, NOW + dt.timedelta(hours=1))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    again = new.reissue_session(pem, "s-1", NOW, NOW + dt.timedelta(hours=1))
    assert again.public_key() == key.public_key()
    again.verify_directly_issued_by(new.cert)
    with pytest.raises(ValueError):
        new.reissue_session(pem, "s-2", NOW, NOW + dt.timedelta(hours=1))


# --- gateway/rotation.py: the state directory through a rotation -------------------------------


def _state(tmp: Path) -> tuple[gw_rotation.CARotation, InterceptAuthority]:
    state = gw_rotation.recover(tmp, 0.0)  # first, as the gateway does
    ident = load_or_create_identity(tmp, ["airlock.internal", "github.com"], ["127.0.0.1"], NOW)
    intercept = InterceptAuthority(tmp / "intercept", ["api.github.com"])
    return gw_rotation.CARotation(tmp, ident, intercept, state), intercept


def test_prepare_commit_finish_in_the_state_directory(tmp_path: Path) -> None:
    rot, intercept = _state(tmp_path)
    old_ca, old_key = rot.identity.ca.cert_pem, (tmp_path / "ca.key").read_bytes()
    old_api = intercept.cert_pem
    assert len(rot.ca_pems()) == 1 and len(rot.pins()) == 1

    rot.prepare(60, 1000.0)
    assert rot.issuing_ca is not rot.identity.ca  # the next CA issues at once
    assert rot.ca_pems()[0] == old_ca and len(rot.ca_pems()) == 2
    assert len(rot.pins()) == 2 and len(rot.api_ca_pems()) == 2
    assert (tmp_path / "gateway.pem").read_bytes() != b""  # still the old one served
    nxt = rot.issuing_ca.cert_pem

    new_identity = rot.commit(1010.0)
    assert new_identity.ca.cert_pem == nxt
    assert (tmp_path / "ca.pem").read_bytes() == nxt
    assert (tmp_path / "ca.key").read_bytes() != old_key  # the old CA key is gone
    assert intercept.cert_pem != old_api  # interception serves the new CA
    assert rot.state.phase is Phase.OVERLAP and rot.state.overlap_until == 1070.0
    assert set(rot.ca_pems()) == {old_ca, nxt}
    assert old_api in rot.api_ca_pems()
    assert not (tmp_path / "rotation" / "next").exists()
    # No private key is kept for the old identity.
    assert sorted(p.name for p in (tmp_path / "rotation" / "old").iterdir()) == [
        "ca.pem",
        "gateway.pem",
        "intercept-ca.pem",
    ]
    # A restart during the overlap sees the same trust.
    again, _ = _state(tmp_path)
    assert again.state == rot.state and set(again.ca_pems()) == {old_ca, nxt}

    rot.finish()
    assert rot.ca_pems() == [nxt] and len(rot.pins()) == 1
    assert not (tmp_path / "rotation" / "old").exists()
    assert gw_rotation.read_state(tmp_path).phase is Phase.IDLE


def test_a_commit_cut_short_is_completed_at_start(tmp_path: Path) -> None:
    rot, _ = _state(tmp_path)
    rot.prepare(60, 1000.0)
    nxt = rot.issuing_ca.cert_pem
    # The crash: the state says overlap, the next files were not moved yet.
    gw_rotation.write_state(tmp_path, core.committed(rot.state, 1001.0))
    again, _ = _state(tmp_path)
    assert again.identity.ca.cert_pem == nxt
    assert not (tmp_path / "rotation" / "next").exists()


def test_a_prepared_rotation_survives_a_restart(tmp_path: Path) -> None:
    rot, _ = _state(tmp_path)
    rot.prepare(60, 1000.0)
    nxt = rot.issuing_ca.cert_pem
    again, _ = _state(tmp_path)
    assert again.state.phase is Phase.PREPARED and again.issuing_ca.cert_pem == nxt
    again.prepare(60, 1005.0)  # prepared again: the same next CA
    assert again.issuing_ca.cert_pem == nxt


# --- host/bundle.py: rewriting in place ----------------------------------------------------------

GITCONFIG = """[http "https://airlock.internal:9/"]
\tsslCAInfo = "/run/airlock/ca.pem"
\tpinnedPubkey = sha256//OLD
\tsslCert = "/run/airlock/client.pem"
[http "https://github.com:9/"]
\tpinnedPubkey = sha256//OLD
"""


def test_both_pins_are_quoted_so_git_reads_them_whole(tmp_path: Path) -> None:
    text = with_pins(GITCONFIG, "sha256//A;sha256//B")
    assert text.count('pinnedPubkey = "sha256//A;sha256//B"') == 2
    f = tmp_path / "gitconfig"
    f.write_text(text)
    got = subprocess.run(
        ["git", "config", "--file", str(f), "--get", "http.https://github.com:9/.pinnedPubkey"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert got == "sha256//A;sha256//B"  # unquoted, git would stop at the ';'


def test_the_api_bundle_keeps_the_hosts_cas() -> None:
    bundle = b"HOST CAS\n" + API_CA_MARKER + b"OLD API CA\n"
    assert with_api_ca(bundle, "NEW\n") == b"HOST CAS\n" + API_CA_MARKER + b"NEW\n"


def _bundle(d: Path) -> None:
    d.mkdir()
    for name, data, mode in [
        ("ca.pem", "OLD CA\n", 0o444),
        ("client.pem", "OLD CERT\n", 0o444),
        ("client.key", "KEY\n", 0o400),
        ("gitconfig", GITCONFIG, 0o444),
        ("api-ca.pem", "OLD API\n", 0o444),
        ("ca-bundle.pem", "HOST\n" + API_CA_MARKER.decode() + "OLD API\n", 0o444),
    ]:
        (d / name).write_text(data)
        os.chmod(d / name, mode)
    (d / "SHA256SUMS").write_text("x  ca.pem\nx  client.pem\nx  client.key\nx  gitconfig\n")
    (d / "session.json").write_text(json.dumps({"id": "s-1", "gateway": "x"}))


def test_refresh_bundle_replaces_by_rename_and_keeps_modes(tmp_path: Path) -> None:
    import hashlib

    d = tmp_path / "b"
    _bundle(d)
    inode = os.stat(d / "client.pem").st_ino
    changed = refresh_bundle(
        d, cert_pem="NEW CERT\n", ca_pem="OLD CA\nNEW CA\n", pins="sha256//A", api_ca_pem="N\n"
    )
    assert set(changed) == {"client.pem", "ca.pem", "gitconfig", "api-ca.pem", "ca-bundle.pem"}
    assert (d / "client.pem").read_text() == "NEW CERT\n"
    assert os.stat(d / "client.pem").st_ino != inode  # renamed into place, not rewritten
    assert os.stat(d / "client.pem").st_mode & 0o777 == 0o444
    assert (d / "client.key").read_text() == "KEY\n"  # the key is never touched
    assert (d / "ca-bundle.pem").read_text().startswith("HOST\n")
    sums = (d / "SHA256SUMS").read_text()
    assert hashlib.sha256(b"NEW CERT\n").hexdigest() + "  client.pem" in sums
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert bundle_session_id(d) == "s-1"
    # The same again: nothing to do.
    again = refresh_bundle(
        d, cert_pem="NEW CERT\n", ca_pem="OLD CA\nNEW CA\n", pins="sha256//A", api_ca_pem="N\n"
    )
    assert again == []


def test_replace_file_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(BundleError):
        replace_file(tmp_path / "link", b"y")
    assert (tmp_path / "target").read_text() == "x"


def test_refresh_names_what_it_could_not_rewrite(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _bundle(d)
    (tmp_path / "empty").mkdir()
    sessions = [
        {"id": "s-1", "state": "active", "client_cert_pem": "C\n", "expires_at": 4e9},
        {"id": "s-2", "state": "active", "client_cert_pem": "C\n", "expires_at": 4e9},
    ]
    trust = {"ca_pem": "CA\n", "pinned_pubkey": "sha256//A", "api_ca_pem": None}
    report = refresh([d, tmp_path / "empty"], sessions, trust)
    assert [sid for _, sid in report.updated] == ["s-1"]
    assert report.problems[0][0] == tmp_path / "empty"
    assert report.untracked == ["s-2"]


# --- host/token_swap.py --------------------------------------------------------------------------


def _config(tmp: Path, token_file: Path, more: str = "") -> Config:
    text = f"""
[gateway]
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "c.sock"}"
git_listen = "127.0.0.1:1"
[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
token_file = "{token_file}"
{more}
"""
    import tomllib

    return parse_config(tomllib.loads(text), tmp / "airlock.toml")


def test_new_token_problem() -> None:
    st = os.stat_result((0o100600, 0, 0, 1, 1000, 1000, 40, 0, 0, 0))
    assert new_token_problem(st, 1000) is None
    assert "chmod 600" in (new_token_problem(os.stat_result((0o100644, *st[1:])), 1000) or "")
    assert "chown 1000" in (
        new_token_problem(os.stat_result((0o100600, 0, 0, 1, 5, 5, 40, 0, 0, 0)), 1000) or ""
    )
    assert new_token_problem(os.stat_result((0o100600, 0, 0, 1, 0, 0, 40, 0, 0, 0)), 1000) is None
    assert "empty" in (
        new_token_problem(os.stat_result((0o100600, 0, 0, 1, 1000, 1000, 0, 0, 0, 0)), 1000) or ""
    )
    assert "regular" in (new_token_problem(os.stat_result((0o040700, *st[1:])), 1000) or "")


def test_a_systemd_credential_is_refused_with_what_to_do(tmp_path: Path) -> None:
    cfg = _config(tmp_path, Path("/run/credentials/airlock-gateway.service/github-token"))
    new = tmp_path / "new"
    new.write_text("ghs_" + "a" * 36)
    os.chmod(new, 0o600)
    with pytest.raises(TokenSwapError) as exc:
        swap_token_file(cfg, None, new)
    msg = str(exc.value)
    assert "LoadCredential" in msg and "restart the unit" in msg and "sessions survive" in msg


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("ghs_old")
    os.chmod(real, 0o600)
    (tmp_path / "link").symlink_to(real)
    cfg = _config(tmp_path, tmp_path / "link")
    new = tmp_path / "new"
    new.write_text("ghs_new")
    os.chmod(new, 0o600)
    with pytest.raises(TokenSwapError, match="symlink"):
        swap_token_file(cfg, None, new)
    assert real.read_text() == "ghs_old"


def test_the_swap_is_a_rename_and_keeps_owner_and_mode(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("ghs_old\n")
    os.chmod(tok, 0o600)
    inode = os.stat(tok).st_ino
    new = tmp_path / "new"
    new.write_text("ghs_new\n")
    os.chmod(new, 0o400)
    swapped = swap_token_file(_config(tmp_path, tok), "github.com", new)
    assert swapped.upstream == "github.com" and tok.read_text() == "ghs_new\n"
    assert os.stat(tok).st_ino != inode and os.stat(tok).st_mode & 0o777 == 0o600
    assert new.exists()  # the operator's file is left alone


def test_choose_upstream_names_the_problem(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tmp_path / "t")
    with pytest.raises(TokenSwapError, match=r"no upstream example\.test"):
        choose_upstream(cfg, "example.test")
    assert choose_upstream(cfg, None).host == "github.com"
