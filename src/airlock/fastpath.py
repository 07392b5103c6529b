"""The `airlock` entry point: `airlock run` through the run agent when one serves this config.

Standard library only until it falls back to the full CLI. It takes the fast way only for a
non-interactive `run` by root with an agent listening for the config it resolves the same way
the CLI does for root (`--config`, `$AIRLOCK_CONFIG`, /etc/airlock/airlock.toml); anything
else (no agent, `-i`/`-t`, another command, any error before the request is sent) runs the
full CLI in this process, with the same result, only slower.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys

from airlock import agentproto

_INTERACTIVE = re.compile(r"-[a-zA-Z]*[it][a-zA-Z]*|--interactive|--tty")
DEFAULT_CONFIG = "/etc/airlock/airlock.toml"


def _config_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return os.environ.get("AIRLOCK_CONFIG") or DEFAULT_CONFIG


def _wants_fast_path(argv: list[str]) -> bool:
    if argv[:1] != ["run"] or os.geteuid() != 0 or "--help" in argv:
        return False
    # Conservative: a terminal or stdin anywhere (also in the command: `grep -i`) goes
    # the full way, which handles terminals with the docker CLI.
    return not any(_INTERACTIVE.fullmatch(a) for a in argv[1:])


def run_through_agent(argv: list[str]) -> int | None:
    """The exit code of `airlock run ARGV...` as the agent ran it, or None to fall back."""
    path = agentproto.socket_path(_config_path(argv))
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        sys.stdout.flush()
        sys.stderr.flush()
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
        agentproto.send_request(sock, request, [0, 1, 2])
    except OSError:
        sock.close()
        return None
    # From here on the agent runs the command: no fall-back (it would run twice).

    def interrupt(_signum: int, _frame: object) -> None:
        try:
            sock.sendall(agentproto.INTERRUPT)
        except OSError:
            pass

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    data = b""
    while len(data) < 4:
        try:
            chunk = sock.recv(4 - len(data))
        except InterruptedError:
            continue
        if not chunk:
            sys.stderr.write("airlock: the run agent ended without an exit code\n")
            return 125
        data += chunk
    (code,) = struct.unpack("!i", data)
    return int(code)


def main() -> None:
    argv = sys.argv[1:]
    if _wants_fast_path(argv):
        code = run_through_agent(argv)
        if code is not None:
            sys.exit(code)
    from airlock.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
