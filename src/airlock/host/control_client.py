"""A small synchronous client for the gateway's control socket."""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any


class ControlError(Exception):
    """The control socket could not be reached or refused the call."""

    def __init__(self, message: str, status: int | None = None, kind: str = "error") -> None:
        super().__init__(message)
        self.status = status
        # "missing" (no socket), "not_running" (nothing listens), "permission" (the
        # filesystem refuses this uid), "refused" (not in gateway.control_uids), "error".
        self.kind = kind


# The gateway's refusal of a uid not in gateway.control_uids (gateway/control.py).
_REFUSED_UID = re.compile(r"^uid (-?\d+) may not use the control socket")


def _permission_denied(path: Path) -> ControlError:
    return ControlError(
        f"permission denied on the control socket {path} for uid {os.geteuid()}: only the "
        "gateway's user and root can open it; run as root (or as a uid in "
        "gateway.control_uids that can reach the socket)",
        kind="permission",
    )


def _refused(path: Path, message: str | None) -> ControlError:
    m = _REFUSED_UID.match(message or "")
    uid = int(m.group(1)) if m else os.geteuid()
    instead = "a uid that is listed" if uid == 0 else "root"
    return ControlError(
        f"uid {uid} may not use the control socket {path}: uid {uid} is not in "
        f"gateway.control_uids; add it there and restart the gateway, or run as {instead}",
        403,
        kind="refused",
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("airlock-control", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class ControlClient:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise ControlError(
                f"no gateway control socket at {self.path}: the gateway is not running; start "
                "it with `airlock gateway --config FILE` (or check gateway.control_socket)",
                kind="missing",
            ) from None
        except PermissionError:
            raise _permission_denied(self.path) from None
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} is not a socket; refusing to connect")
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, route, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except ConnectionRefusedError:
            raise ControlError(
                f"the gateway is not running: nothing listens on {self.path}; start it with "
                "`airlock gateway --config FILE`",
                kind="not_running",
            ) from None
        except PermissionError:
            raise _permission_denied(self.path) from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            raise ControlError(
                f"the gateway at {self.path} closed the connection without an answer; see its log",
            ) from None
        except TimeoutError:
            raise ControlError(
                f"the gateway at {self.path} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
                raise ControlError(
                    f"no gateway control socket at {self.path}: the gateway is not running",
                    kind="missing",
                ) from None
            raise ControlError(f"control socket {self.path}: {exc}") from None
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            raise ControlError(f"control socket answered {resp.status} with non-JSON") from None
        if resp.status >= 400:
            msg = decoded.get("error") if isinstance(decoded, dict) else None
            if resp.status == 403 and _REFUSED_UID.match(msg or ""):
                raise _refused(self.path, msg)
            raise ControlError(msg or f"HTTP {resp.status}", resp.status)
        return decoded

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/v1/health")
        return result

    def create_session(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/sessions", body)
        return result

    def list_sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("GET", "/v1/sessions")["sessions"]
        return result

    def show(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/sessions/{session_id}")
        return result

    def revoke(self, session_id: str, reason: str = "revoked by operator") -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "POST", f"/v1/sessions/{session_id}/revoke", {"reason": reason}
        )
        return result

    def renew(self, session_id: str, csr: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/sessions/{session_id}/renew", {"csr": csr})
        return result

    def activate(self, session_id: str, **binding: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/sessions/{session_id}/activate", binding)
        return result

    def add_listener(self, address: str) -> list[str]:
        result: list[str] = self.call("POST", "/v1/listeners", {"address": address})["addresses"]
        return result

    def remove_listener(self, address: str) -> list[str]:
        result: list[str] = self.call("POST", "/v1/listeners/remove", {"address": address})[
            "addresses"
        ]
        return result

    def listeners(self) -> list[str]:
        result: list[str] = self.call("GET", "/v1/listeners")["addresses"]
        return result

    def revoke_all(self, reason: str = "revoked by operator") -> int:
        result: int = self.call("POST", "/v1/revoke-all", {"reason": reason})["revoked"]
        return result

    def rotation(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/v1/rotation")
        return result

    def rotation_prepare(self, overlap: float) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/rotation/prepare", {"overlap": overlap})
        return result

    def rotation_commit(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/v1/rotation/commit", {})
        return result
