"""Review findings (2026-12-01) on CA rotation: a prepared rotation whose interception CA
does not fit the gateway started again must not escape as an InterceptError (a traceback at
start, or a 500 after a half-made commit). The gateway still starts (it makes the prepared
interception CA anew for its names; the next `rotate ca` writes it into the bundles), and a
commit whose interception CA does not fit is refused (RotationError: a 409) before anything
is written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from airlock.core.rotation import Phase
from airlock.gateway import rotation as gw_rotation
from airlock.gateway.intercept_ca import InterceptAuthority, generate_ca, permitted_names, write_ca
from airlock.gateway.pki import load_or_create_identity

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NAMES = ["airlock.internal", "github.com"]
STATE = gw_rotation.STATE_FILE


def _start(tmp: Path, api_names: list[str] | None) -> gw_rotation.CARotation:
    """What Gateway.__init__ does: recover, load the identity, interception CA, rotation."""
    state = gw_rotation.recover(tmp, 0.0)
    ident = load_or_create_identity(tmp, NAMES, ["127.0.0.1"], NOW)
    intercept = InterceptAuthority(tmp / "intercept", api_names) if api_names else None
    return gw_rotation.CARotation(tmp, ident, intercept, state)


def _intercept_names(rot: gw_rotation.CARotation) -> list[str] | None:
    assert rot.next_intercept is not None
    return permitted_names(rot.next_intercept[1])


def test_api_enabled_after_prepare_still_starts_with_a_fitting_next_ca(tmp_path: Path) -> None:
    # Prepared while the API interception was off: no rotation/next/intercept.
    _start(tmp_path, None).prepare(600, 1000.0)
    # The operator enables the API and restarts the gateway: it starts (no InterceptError
    # escapes), with a prepared interception CA for its names, which the bundles get.
    rot = _start(tmp_path, ["api.github.com"])
    assert _intercept_names(rot) == ["api.github.com"]
    assert len(rot.api_ca_pems()) == 2
    rot.commit(1010.0)
    assert rot.intercept is not None and permitted_names(rot.intercept.cert) == ["api.github.com"]


def test_api_names_changed_after_prepare_start_with_a_next_ca_for_them(tmp_path: Path) -> None:
    _start(tmp_path, ["api.github.com"]).prepare(600, 1000.0)
    # Restarted with one more API name: the current interception CA is made anew, and so
    # is the prepared one (it had the old names; committing it would fail or break the API).
    rot = _start(tmp_path, ["api.github.com", "api.example.test"])
    assert _intercept_names(rot) == ["api.example.test", "api.github.com"]
    rot.commit(1010.0)
    assert rot.state.phase is Phase.OVERLAP


def test_a_commit_whose_interception_ca_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    rot = _start(tmp_path, ["api.github.com"])
    rot.prepare(600, 1000.0)
    # The prepared interception CA with other names (in memory and on disk).
    key, cert = generate_ca(["api.example.test"], NOW)
    write_ca(tmp_path / "rotation" / "next" / "intercept", key, cert)
    rot.next_intercept = (key, cert)
    files = ["ca.pem", "ca.key", "gateway.pem", "gateway.key", "intercept/ca.pem", STATE]
    before = {f: (tmp_path / f).read_bytes() for f in files}
    identity = rot.identity
    with pytest.raises(gw_rotation.RotationError, match=r"api\.example\.test"):
        rot.commit(1010.0)
    assert {f: (tmp_path / f).read_bytes() for f in files} == before
    assert not (tmp_path / "rotation" / "old").exists()
    assert (tmp_path / "rotation" / "next" / "ca.pem").exists()
    assert rot.state.phase is Phase.PREPARED and rot.identity is identity
    assert rot.next is not None


def test_a_session_without_a_kept_certificate_still_gets_the_new_trust(tmp_path: Path) -> None:
    # `rotate ca` says of such sessions (made before the gateway kept certificates) that
    # they "lose access when the overlap ends". For that, their bundle must still get both
    # CAs and both server pins: after the commit the gateway shows the new server
    # certificate, which a bundle pinning only the old key refuses at once.
    from airlock.host.rotation import refresh
    from tests.unit.test_rotation import _bundle

    d = tmp_path / "b"
    _bundle(d)
    sessions = [{"id": "s-1", "state": "active", "expires_at": 4e9}]  # no client_cert_pem
    trust = {"ca_pem": "OLD CA\nNEW CA\n", "pinned_pubkey": "sha256//A;sha256//B"}
    refresh([d], sessions, trust)
    assert (d / "ca.pem").read_text() == "OLD CA\nNEW CA\n"
    assert "sha256//B" in (d / "gitconfig").read_text()
    assert (d / "client.pem").read_text() == "OLD CERT\n"  # its certificate stays
