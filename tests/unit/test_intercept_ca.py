"""The interception CA: name constraints that real TLS clients enforce, reuse and rotation,
and TLS termination over a stream whose first bytes were already read (loopback only)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airlock.gateway.api.tls_stream import TlsServerStream
from airlock.gateway.intercept_ca import InterceptAuthority, InterceptError, permitted_names

NAMES = ["api.github.com", "ghe.example.com"]


def _forged_leaf(ca: InterceptAuthority, name: str) -> tuple[bytes, bytes]:
    """A leaf for ``name`` signed with the CA's key, as a thief of the key would make it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class _Server:
    """One TLS server on loopback that shows a given certificate to every client."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(4):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hi")
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


def _client_verifies(ca_pem: bytes, name: str, port: int) -> None:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.recv(2) == b"hi"


@pytest.fixture
def authority(tmp_path: Path) -> InterceptAuthority:
    return InterceptAuthority(tmp_path / "intercept", NAMES)


def test_the_ca_permits_exactly_the_api_names_and_no_address(
    authority: InterceptAuthority,
) -> None:
    ext = authority.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert permitted_names(authority.cert) == sorted(NAMES)
    excluded = {str(g.value) for g in ext.value.excluded_subtrees or ()}
    assert excluded == {"0.0.0.0/0", "::/0"}
    assert oct((authority.directory / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_its_certificate_for_an_api_name_is_trusted(authority: InterceptAuthority) -> None:
    server = _Server(authority.context_for("api.github.com"))
    try:
        _client_verifies(authority.cert_pem, "api.github.com", server.port)
    finally:
        server.close()


def test_a_leaf_for_another_name_signed_by_its_key_is_refused_by_the_client(
    authority: InterceptAuthority, tmp_path: Path
) -> None:
    """Even the CA's own key cannot vouch for a name outside its constraints."""
    cert_pem, key_pem = _forged_leaf(authority, "evil.example.com")
    (tmp_path / "leaf.pem").write_bytes(cert_pem)
    (tmp_path / "leaf.key").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    server = _Server(ctx)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)name constraint|permitted"):
            _client_verifies(authority.cert_pem, "evil.example.com", server.port)
    finally:
        server.close()


def test_it_issues_for_no_other_name(authority: InterceptAuthority) -> None:
    with pytest.raises(InterceptError):
        authority.context_for("evil.example.com")


def test_the_same_names_reuse_the_ca_and_new_names_replace_it(tmp_path: Path) -> None:
    d = tmp_path / "intercept"
    first = InterceptAuthority(d, NAMES)
    again = InterceptAuthority(d, list(reversed(NAMES)))
    assert again.cert == first.cert
    changed = InterceptAuthority(d, ["api.github.com"])
    assert changed.cert != first.cert
    assert permitted_names(changed.cert) == ["api.github.com"]


def test_tls_terminates_over_a_stream_whose_hello_was_already_read(
    authority: InterceptAuthority,
) -> None:
    """What the egress proxy does: read the ClientHello, then hand the bytes to TLS."""
    got: list[bytes] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = await reader.read(5)  # a part of the hello, read by "the proxy"
            stream = TlsServerStream(authority.context_for("api.github.com"), reader, writer, first)
            await stream.handshake()
            got.append(await stream.read())
            await stream.write(b"pong")
            await stream.close()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ctx = ssl.create_default_context(cadata=authority.cert_pem.decode())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="api.github.com"
        )
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(4), 5) == b"pong"
        writer.close()
        server.close()

    asyncio.run(main())
    assert got == [b"ping"]
