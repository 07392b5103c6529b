"""CA rotation in the state directory: the files of each phase (core/rotation.py decides).

Layout::

    STATE_DIR/rotation.json                 the phase and the end of the overlap
    STATE_DIR/rotation/next/                prepared: the next CA, server key and certificate,
        ca.key ca.pem gateway.key gateway.pem intercept/ca.key intercept/ca.pem
    STATE_DIR/rotation/old/                 overlap: the replaced certificates (no key)
        ca.pem gateway.pem intercept-ca.pem

The commit copies the current certificates to ``old/`` and writes the overlap into
``rotation.json`` first, then renames each file of ``next/`` over the current one: the old
private keys are gone from then on (nothing signs or serves with them any more). A commit cut
short is completed at the next start. When the overlap ends, ``old/`` is removed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from airlock.core import rotation as core
from airlock.core.rotation import Phase, RotationState
from airlock.gateway.intercept_ca import (
    InterceptAuthority,
    InterceptError,
    generate_ca,
    permitted_names,
    read_ca,
    write_ca,
)
from airlock.gateway.pki import (
    CertificateAuthority,
    GatewayIdentity,
    create_identity,
    load_identity,
    pinned_pubkey,
    server_names,
)

STATE_FILE = "rotation.json"
_FILES = ("ca.key", "ca.pem", "gateway.key", "gateway.pem")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_state(state_dir: Path) -> RotationState:
    try:
        return RotationState.from_json(json.loads((state_dir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return RotationState()
    except (OSError, ValueError, TypeError) as exc:
        raise RotationError(f"{state_dir / STATE_FILE}: unreadable rotation state: {exc}") from None


def write_state(state_dir: Path, state: RotationState) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_dir / STATE_FILE)


class RotationError(Exception):
    pass


def complete_commit(state_dir: Path) -> None:
    """Rename every file of ``rotation/next`` over the current one (idempotent)."""
    nxt = state_dir / "rotation" / "next"
    for name in _FILES:
        if (nxt / name).exists():
            os.replace(nxt / name, state_dir / name)
    (state_dir / "intercept").mkdir(mode=0o700, exist_ok=True)
    for name in ("ca.key", "ca.pem"):
        if (nxt / "intercept" / name).exists():
            os.replace(nxt / "intercept" / name, state_dir / "intercept" / name)
    shutil.rmtree(nxt, ignore_errors=True)


def recover(state_dir: Path, now: float) -> RotationState:
    """Before the identity is loaded at start-up: finish a commit cut short."""
    state = read_state(state_dir)
    nxt = (state_dir / "rotation" / "next").is_dir()
    if core.on_start(state, now, nxt) is core.StartAction.COMPLETE_COMMIT:
        complete_commit(state_dir)
    return state


class CARotation:
    """The trust of the moment, for the gateway's TLS contexts and the bundles it hands out."""

    def __init__(
        self,
        state_dir: Path,
        identity: GatewayIdentity,
        intercept: InterceptAuthority | None,
        state: RotationState,
    ) -> None:
        self.state_dir = state_dir
        self.identity = identity
        self.intercept = intercept
        self.state = state
        self.next: GatewayIdentity | None = None
        self.next_intercept: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
        if state.phase is Phase.PREPARED:
            self._load_next()

    @property
    def _next_dir(self) -> Path:
        return self.state_dir / "rotation" / "next"

    @property
    def _old_dir(self) -> Path:
        return self.state_dir / "rotation" / "old"

    def _load_next(self) -> None:
        try:
            nxt = load_identity(self._next_dir)
        except (OSError, ValueError) as exc:
            raise RotationError(
                f"{self._next_dir}: the prepared rotation is unreadable: {exc}"
            ) from None
        next_intercept = None
        if self.intercept is not None:
            next_intercept = self._next_intercept_for(self.intercept)
        self.next, self.next_intercept = nxt, next_intercept

    def _next_intercept_for(
        self, intercept: InterceptAuthority
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The prepared interception CA, if it permits exactly this gateway's API names;
        else (prepared with the API off, or with other names, then restarted) a new one for
        these names: the bundles get it when `rotate ca` is run again (prepare, rewrite,
        commit), and the commit checks the names again."""
        d = self._next_dir / "intercept"
        try:
            key, cert = read_ca(d)
            if permitted_names(cert) == intercept.names:
                return key, cert
        except InterceptError:
            pass  # missing or unreadable: made anew below
        now = dt.datetime.now(dt.UTC)
        try:
            key, cert = generate_ca(intercept.names, now)
            shutil.rmtree(d, ignore_errors=True)
            write_ca(d, key, cert)
        except (OSError, ValueError, InterceptError) as exc:
            raise RotationError(
                f"{d}: cannot make the prepared rotation's interception CA: {exc}"
            ) from None
        return key, cert

    def _old(self, name: str) -> list[bytes]:
        if self.state.phase is not Phase.OVERLAP:
            return []
        try:
            return [(self._old_dir / name).read_bytes()]
        except OSError:
            return []

    # --- what is trusted now --------------------------------------------------------------

    @property
    def issuing_ca(self) -> CertificateAuthority:
        """Who signs session certificates: the next CA as soon as one is prepared."""
        return self.next.ca if self.next is not None else self.identity.ca

    def ca_pems(self) -> list[bytes]:
        """The CAs whose client certificates are accepted, and which clients must trust."""
        pems = [self.identity.ca.cert_pem]
        if self.next is not None:
            pems.append(self.next.ca.cert_pem)
        return pems + self._old("ca.pem")

    def pins(self) -> list[str]:
        pins = [self.identity.pinned_pubkey]
        if self.next is not None:
            pins.append(self.next.pinned_pubkey)
        for pem in self._old("gateway.pem"):
            pins.append(pinned_pubkey(x509.load_pem_x509_certificate(pem)))
        return list(dict.fromkeys(pins))

    def api_ca_pems(self) -> list[bytes]:
        if self.intercept is None:
            return []
        pems = [self.intercept.cert_pem]
        if self.next_intercept is not None:
            pems.append(_pem(self.next_intercept[1]))
        return pems + self._old("intercept-ca.pem")

    def describe(self) -> dict[str, object]:
        api = self.api_ca_pems()
        return {
            **self.state.to_json(),
            "ca_pem": b"".join(self.ca_pems()).decode(),
            "pinned_pubkey": ";".join(self.pins()),
            "api_ca_pem": b"".join(api).decode() if api else None,
            "ca_fingerprints": [
                x509.load_pem_x509_certificate(p).fingerprint(hashes.SHA256()).hex()
                for p in self.ca_pems()
            ],
        }

    # --- the steps ------------------------------------------------------------------------

    def prepare(self, overlap: float, now: float) -> None:
        refusal = core.prepare_refusal(self.state, overlap, now)
        if refusal is not None:
            raise RotationError(refusal)
        if self.state.phase is Phase.OVERLAP:  # ended, its timer not yet run
            self.finish()
        made = self.next is None
        if made:
            when = dt.datetime.fromtimestamp(now, dt.UTC)
            try:
                shutil.rmtree(self._next_dir, ignore_errors=True)
                self._next_dir.parent.mkdir(mode=0o700, exist_ok=True)
                names, ips = server_names(self.identity.server_cert)
                nxt = create_identity(self._next_dir, names, ips, when)
                next_intercept = None
                if self.intercept is not None:
                    key, cert = generate_ca(self.intercept.names, when)
                    write_ca(self._next_dir / "intercept", key, cert)
                    next_intercept = (key, cert)
            except (OSError, ValueError, InterceptError) as exc:
                shutil.rmtree(self._next_dir, ignore_errors=True)
                raise RotationError(f"cannot make the next CA: {exc}") from None
        state = core.prepared(self.state, overlap, now)
        try:
            write_state(self.state_dir, state)
        except OSError as exc:
            if made:
                shutil.rmtree(self._next_dir, ignore_errors=True)
            raise RotationError(f"cannot write {self.state_dir / STATE_FILE}: {exc}") from None
        if made:
            self.next, self.next_intercept = nxt, next_intercept
        self.state = state

    def commit(self, now: float) -> GatewayIdentity:
        """Make the next identity the current one; returns it (the caller swaps contexts)."""
        refusal = core.commit_refusal(self.state)
        if refusal is not None or self.next is None:
            raise RotationError(refusal or "the prepared rotation is gone")
        # Everything that can refuse the commit, before a file is written or renamed.
        if self.intercept is not None:
            got = permitted_names(self.next_intercept[1]) if self.next_intercept else None
            if got != self.intercept.names:
                raise RotationError(
                    "the prepared interception CA permits "
                    f"{', '.join(got) if got else 'no names'}, this gateway's API names are "
                    f"{', '.join(self.intercept.names)}; restart the gateway and run "
                    "`airlock rotate ca` again (it makes one for these names)"
                )
        state = core.committed(self.state, now)
        old = self._old_dir
        try:
            shutil.rmtree(old, ignore_errors=True)
            old.mkdir(mode=0o700, parents=True)
            (old / "ca.pem").write_bytes(self.identity.ca.cert_pem)
            (old / "gateway.pem").write_bytes(_pem(self.identity.server_cert))
            if self.intercept is not None:
                (old / "intercept-ca.pem").write_bytes(self.intercept.cert_pem)
            write_state(self.state_dir, state)
        except OSError as exc:
            shutil.rmtree(old, ignore_errors=True)
            raise RotationError(f"cannot write the rotation state: {exc}") from None
        # From here the commit is on disk (a start completes it if this is cut short).
        self.state = state
        complete_commit(self.state_dir)
        self.identity = load_identity(self.state_dir)
        if self.intercept is not None and self.next_intercept is not None:
            key, cert = read_ca(self.state_dir / "intercept")
            self.intercept.adopt(key, cert)
        self.next = None
        self.next_intercept = None
        return self.identity

    def finish(self) -> None:
        """The overlap is over: only the current CA from now on."""
        # Fail closed: the old CA is out in memory and on disk (old/ gone) even if the state
        # file cannot be written (the gateway retries that, test_rotation_finish_retry).
        shutil.rmtree(self._old_dir, ignore_errors=True)
        self.state = RotationState()
        write_state(self.state_dir, self.state)
