"""Review findings (2026-12-01) on CA rotation: a prepared rotation whose interception CA
does not fit the gateway started again must fail as a RotationError (one-line StartupError /
409), not an InterceptError that escapes as a traceback or a 500 after a half-made commit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from airlock.gateway import rotation as gw_rotation
from airlock.gateway.intercept_ca import InterceptAuthority
from airlock.gateway.pki import load_or_create_identity

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NAMES = ["airlock.internal", "github.com"]


def _start(tmp: Path, api_names: list[str] | None) -> gw_rotation.CARotation:
    """What Gateway.__init__ does: recover, load the identity, interception CA, rotation."""
    state = gw_rotation.recover(tmp, 0.0)
    ident = load_or_create_identity(tmp, NAMES, ["127.0.0.1"], NOW)
    intercept = InterceptAuthority(tmp / "intercept", api_names) if api_names else None
    return gw_rotation.CARotation(tmp, ident, intercept, state)


def test_api_enabled_after_prepare_is_a_rotation_error_at_start(tmp_path: Path) -> None:
    # Prepared while the API interception was off: no rotation/next/intercept.
    _start(tmp_path, None).prepare(600, 1000.0)
    # The operator enables the API and restarts the gateway. server.py only turns
    # RotationError into a StartupError; anything else is a traceback.
    with pytest.raises(gw_rotation.RotationError):
        _start(tmp_path, ["api.github.com"])


def test_api_names_changed_after_prepare_fail_the_commit_cleanly(tmp_path: Path) -> None:
    _start(tmp_path, ["api.github.com"]).prepare(600, 1000.0)
    # Restarted with one more API name: the current interception CA is made anew, the
    # prepared one still has the old names.
    rot = _start(tmp_path, ["api.github.com", "api.example.test"])
    # control.rotation_commit catches RotationError, OSError and ValueError only.
    with pytest.raises((gw_rotation.RotationError, OSError, ValueError)):
        rot.commit(1010.0)


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
