"""The interception CA: the one authority sandboxes trust for the GitHub API's names.

The egress proxy terminates TLS for exactly the configured upstreams' API names
(``api.github.com``, a GitHub Enterprise host) so that the gateway, not the sandbox, holds
the API credential. The certificates it shows come from this CA, which is separate from the
gateway's own CA (that one names the gateway and the sessions) and carries X.509 name
constraints (critical) that permit only those DNS names and no IP address at all: even its
key, if stolen, cannot vouch for any other site to a client that checks constraints
(OpenSSL, Go, NSS, rustls all do). RFC 5280 lets a DNS constraint also cover names below
it (``x.api.github.com``); the gateway only ever issues for the exact names.

The CA lives in ``STATE_DIR/intercept/`` (key 0600). When the configured names change, a new
CA with the new constraints replaces it (sandboxes started before keep the old bundle and
cannot reach the new names until they are restarted). Leaf certificates are made in memory,
one per name, and renewed a day before they expire.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airlock.gateway.pki import CA_KEY_USAGE, key_pem, new_private_key, write_private

__all__ = ["InterceptAuthority", "InterceptError", "generate_ca", "read_ca", "write_ca"]

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=30)
LEAF_RENEW_BEFORE = dt.timedelta(days=1)
_CLOCK_SKEW = dt.timedelta(minutes=5)
_NO_IPS = [
    x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
    x509.IPAddress(ipaddress.ip_network("::/0")),
]


class InterceptError(Exception):
    pass


def permitted_names(cert: x509.Certificate) -> list[str] | None:
    """The DNS names a CA certificate's name constraints permit, or None without them."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return sorted(g.value for g in nc.permitted_subtrees or () if isinstance(g, x509.DNSName))


def write_ca(directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """The key (0600) and certificate in ``directory``, each renamed into place."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(directory / "ca.key.tmp", key_pem(key))
    os.replace(directory / "ca.key.tmp", directory / "ca.key")
    tmp = directory / "ca.pem.tmp"
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, directory / "ca.pem")


def read_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA :func:`write_ca` wrote; InterceptError if it is missing or unreadable."""
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except (ValueError, OSError) as exc:
        raise InterceptError(f"{directory}: unreadable interception CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        raise InterceptError(f"{directory}: the key is not the CA certificate's")
    return key, cert


def generate_ca(
    names: Sequence[str], now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new interception CA whose name constraints permit exactly ``names``."""
    key = new_private_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "airlock GitHub API interception CA")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(n) for n in sorted(names)],
                excluded_subtrees=_NO_IPS,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass
class _Leaf:
    context: ssl.SSLContext
    not_after: dt.datetime


class InterceptAuthority:
    """Load (or make) the CA for ``names``; :meth:`context_for` gives a server context."""

    def __init__(
        self,
        directory: Path,
        names: Sequence[str],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.directory = directory
        self.names = sorted({n.lower() for n in names})
        self.clock = clock
        self._leaves: dict[str, _Leaf] = {}
        self.key, self.cert = self._load_or_create()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _load_or_create(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        d = self.directory
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        key_path, cert_path = d / "ca.key", d / "ca.pem"
        now = self.clock()
        if key_path.exists() and cert_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except (ValueError, OSError) as exc:
                raise InterceptError(f"{d}: unreadable interception CA: {exc}") from None
            current = (
                isinstance(key, ec.EllipticCurvePrivateKey)
                and cert.public_key() == key.public_key()
                and permitted_names(cert) == self.names
                and cert.not_valid_after_utc - now > LEAF_LIFETIME
            )
            if current:
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                return key, cert
        # New names (or none yet): a new CA whose constraints are exactly these names.
        key, cert = generate_ca(self.names, now)
        write_ca(d, key, cert)
        return key, cert

    def adopt(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        """Serve certificates of another CA from now on (CA rotation): the next handshake
        already shows a leaf of ``cert``; leaves of the old CA are dropped."""
        if permitted_names(cert) != self.names:
            raise InterceptError("the new interception CA does not cover this gateway's names")
        self.key, self.cert = key, cert
        self._leaves.clear()

    def issue(self, name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        """A server certificate for ``name`` (one of :attr:`names`) and ``key``."""
        if name not in self.names:
            raise InterceptError(f"{name}: not an API name of this gateway")
        now = self.clock()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )

    def context_for(self, name: str) -> ssl.SSLContext:
        """A TLS server context that shows ``name``'s certificate (HTTP/1.1 only)."""
        name = name.lower()
        leaf = self._leaves.get(name)
        if leaf is not None and leaf.not_after - self.clock() > LEAF_RENEW_BEFORE:
            return leaf.context
        key = new_private_key()
        cert = self.issue(name, key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain only from files: a private temporary directory, gone at once.
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            chain, key_file = Path(tmp) / "chain.pem", Path(tmp) / "leaf.key"
            write_private(key_file, key_pem(key))
            write_private(
                chain,
                cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem,
            )
            ctx.load_cert_chain(chain, key_file)
        self._leaves[name] = _Leaf(ctx, cert.not_valid_after_utc)
        return ctx
