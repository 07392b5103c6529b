"""Every ClientHello of a CONNECT tunnel names the CONNECT host. Pure, sans-I/O.

The egress proxy checks the SNI of the first ClientHello before it dials. A TLS 1.3 server
may answer with a HelloRetryRequest, after which the client sends a SECOND ClientHello, in
the clear, that the server reads as the real one: without a check it could name any host
the upstream serves (domain fronting through an allowlisted address). :class:`HelloGuard`
watches both directions of a tunnel from its first byte until the server's real ServerHello
(not a HelloRetryRequest) has gone by; from then on no ClientHello can change what the
server serves, and the guard is done (the relay stops feeding it: no cost afterwards).

Until then, from the client: every record must be a TLS record; every handshake message
must be a ClientHello (nothing else may precede the ServerHello), naming the CONNECT host
(no SNI, another name, or an ECH extension when refused: the tunnel ends); at most two
(RFC 8446 s4.1.4: one retry). Change-cipher-spec (middlebox compatibility), alerts and
0-RTT application data pass. From the server: handshake messages are read only to find
its ServerHello and tell a HelloRetryRequest (its fixed ``random``) from the real one.
"""

from __future__ import annotations

from dataclasses import dataclass

from airlock.core.egress import MAX_CLIENT_HELLO_BYTES, SniStatus, client_hello_sni, same_host

__all__ = ["HELLO_RETRY_RANDOM", "HelloGuard", "HelloRefusal"]

#: RFC 8446 s4.1.3: a ServerHello with this ``random`` is a HelloRetryRequest.
HELLO_RETRY_RANDOM = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"
)
_CHANGE_CIPHER_SPEC, _ALERT, _HANDSHAKE, _APPLICATION_DATA = 20, 21, 22, 23
_CLIENT_HELLO, _SERVER_HELLO = 1, 2
_MAX_RECORD = 2**14 + 2048  # TLSCiphertext limit (RFC 8446 s5.2)
_MAX_HELLOS = 2
_MAX_SERVER_MESSAGE = 64 * 1024  # a ServerHello/HelloRetryRequest is far smaller


@dataclass(frozen=True)
class HelloRefusal:
    rule: str  # "sni_mismatch", "no_sni", "ech", "not_tls", "too_many_client_hellos"
    detail: str = ""


class _Records:
    """Cuts a byte stream into TLS records (content type, payload)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]] | str:
        """The records completed by ``data``, or why the stream is not TLS."""
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 5:
            ctype, major = self._buf[0], self._buf[1]
            length = int.from_bytes(self._buf[3:5], "big")
            if major != 3 or not _CHANGE_CIPHER_SPEC <= ctype <= _APPLICATION_DATA:
                return "not a TLS record"
            if length > _MAX_RECORD:
                return "TLS record too long"
            if len(self._buf) < 5 + length:
                break
            out.append((ctype, bytes(self._buf[5 : 5 + length])))
            del self._buf[: 5 + length]
        return out


class _Messages:
    """Reassembles handshake messages (type, body) from handshake record payloads."""

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, payload: bytes) -> list[tuple[int, bytes]] | str:
        self._buf += payload
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 4:
            length = int.from_bytes(self._buf[1:4], "big")
            if 4 + length > self._limit:
                return "handshake message too long"
            if len(self._buf) < 4 + length:
                break
            out.append((self._buf[0], bytes(self._buf[4 : 4 + length])))
            del self._buf[: 4 + length]
        return out


class HelloGuard:
    """Feed it every byte of a tunnel, each direction in order, until :attr:`done`."""

    def __init__(self, host: str, *, refuse_ech: bool = True) -> None:
        self.host = host
        self.refuse_ech = refuse_ech
        self.done = False  # the server's real ServerHello went by: nothing left to check
        self.client_hellos = 0
        self.retried = False  # the server sent a HelloRetryRequest
        self._client_records = _Records()
        self._client_messages = _Messages(MAX_CLIENT_HELLO_BYTES)
        self._server_records = _Records()
        self._server_messages = _Messages(_MAX_SERVER_MESSAGE)
        self._server_unreadable = False

    def client(self, data: bytes) -> HelloRefusal | None:
        """Bytes from the client, before they go upstream: None, or why the tunnel ends."""
        if self.done or not data:
            return None
        records = self._client_records.feed(data)
        if isinstance(records, str):
            return HelloRefusal("not_tls", records)
        for ctype, payload in records:
            if ctype != _HANDSHAKE:
                continue  # change_cipher_spec, alert, early data: nothing that routes
            messages = self._client_messages.feed(payload)
            if isinstance(messages, str):
                return HelloRefusal("not_tls", messages)
            for mtype, body in messages:
                refusal = self._client_message(mtype, body)
                if refusal is not None:
                    return refusal
        return None

    def _client_message(self, mtype: int, body: bytes) -> HelloRefusal | None:
        if mtype != _CLIENT_HELLO:
            return HelloRefusal("not_tls", f"handshake message {mtype} before the ServerHello")
        self.client_hellos += 1
        if self.client_hellos > _MAX_HELLOS:
            return HelloRefusal("too_many_client_hellos")
        which = "first" if self.client_hellos == 1 else "second"
        result = client_hello_sni(body)
        if result.status is SniStatus.NOT_TLS:
            return HelloRefusal("not_tls", f"{which} ClientHello: {result.reason}")
        if result.status is SniStatus.NO_SNI:
            return HelloRefusal("no_sni", f"{which} ClientHello")
        if result.ech and self.refuse_ech:
            return HelloRefusal("ech", f"{which} ClientHello")
        assert result.name is not None
        if not same_host(result.name, self.host):
            return HelloRefusal("sni_mismatch", f"{which} ClientHello sni={result.name[:253]!r}")
        return None

    def server(self, data: bytes) -> None:
        """Bytes from the server, before they go to the client."""
        if self.done or self._server_unreadable or not data:
            return
        records = self._server_records.feed(data)
        if isinstance(records, str):
            # Not TLS from the server: it will never complete a handshake. The client side
            # stays checked (nothing here ends the checks early).
            self._server_unreadable = True
            return
        for ctype, payload in records:
            if ctype != _HANDSHAKE:
                continue
            messages = self._server_messages.feed(payload)
            if isinstance(messages, str):
                self._server_unreadable = True
                return
            for mtype, body in messages:
                if mtype != _SERVER_HELLO:
                    continue
                if body[2:34] == HELLO_RETRY_RANDOM:
                    self.retried = True  # another ClientHello comes: keep checking
                    continue
                self.done = True  # the real ServerHello: the server has chosen
                return
