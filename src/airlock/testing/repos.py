"""Build real git repositories for tests with the git CLI, isolated from the caller's setup."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

_AUTHOR_NAME = "Airlock Test"
_AUTHOR_EMAIL = "test@airlock.invalid"
# Fixed timestamp: identical inputs give identical object ids, which keeps failures reproducible.
_TIMESTAMP = "1700000000 +0000"
_CHUNK = 1 << 20


def _scrubbed(name: str) -> bool:
    upper = name.upper()
    return (
        upper.startswith("GIT_")
        or "SSL" in upper
        or "CA_BUNDLE" in upper
        or "CERT" in upper
        # A stray proxy would divert traffic meant for loopback test servers.
        or upper.endswith("_PROXY")
        or upper in {"SSH_ASKPASS", "XDG_CONFIG_HOME"}
    )


def git_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a git subprocess that ignores the host's git/TLS/proxy configuration.

    Drops every ``GIT_*`` variable and anything naming SSL, CERT or CA_BUNDLE (this
    machine exports GIT_SSL_CAINFO, SSL_CERT_FILE, ...), so a test's explicit
    ``-c http.sslCAInfo=...`` is the only trust anchor git sees. ``extra`` is applied last.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not _scrubbed(k)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME=_AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=_AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=_AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=_AUTHOR_EMAIL,
        # A failed auth must fail the command, never hang waiting for a password.
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    env.update(extra)
    return env


def _run_git(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], env=dict(env), cwd=cwd, check=True, capture_output=True)


def _write_data(stdin: IO[bytes], payload: bytes) -> None:
    stdin.write(b"data %d\n" % len(payload))
    stdin.write(payload)
    stdin.write(b"\n")


def _commit_header(stdin: IO[bytes], message: bytes, parent: bool) -> None:
    stdin.write(b"commit refs/heads/main\n")
    ident = f"{_AUTHOR_NAME} <{_AUTHOR_EMAIL}> {_TIMESTAMP}".encode()
    stdin.write(b"author " + ident + b"\n")
    stdin.write(b"committer " + ident + b"\n")
    _write_data(stdin, message)
    if parent:
        # "^0" makes fast-import load the existing tip from the repository instead of
        # starting an unrelated history (which it would then refuse to store).
        stdin.write(b"from refs/heads/main^0\n")


def _fast_import(
    repo: Path, feed: list[tuple[str, int, random.Random | bytes]], message: bytes, parent: bool
) -> None:
    """Write one commit on ``main`` via ``git fast-import``, streaming file contents.

    Each feed entry is (path, size, source); source is literal bytes or an RNG that
    produces ``size`` random bytes in 1 MiB pieces, so memory stays flat for huge files.
    """
    with tempfile.TemporaryDirectory(prefix="airlock-git-home-") as home:
        _fast_import_with_env(repo, feed, message, parent, git_env(Path(home)))


def _fast_import_with_env(
    repo: Path,
    feed: list[tuple[str, int, random.Random | bytes]],
    message: bytes,
    parent: bool,
    env: Mapping[str, str],
) -> None:
    argv = [
        "git",
        # Random data doesn't compress; storing it as-is is ~5x faster to import.
        "-c",
        "pack.compression=0",
        # Keep the pack rather than exploding <100 objects into loose files.
        "-c",
        "fastimport.unpackLimit=0",
        f"--git-dir={repo}",
        "fast-import",
        "--quiet",
        # Stream blobs over 1 MiB straight into the pack: flat memory, no delta search.
        "--big-file-threshold=1m",
    ]
    # stderr to a file, not a pipe: nobody reads it while we write, so a pipe could fill up.
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=errors, env=dict(env)) as proc,
    ):
        assert proc.stdin is not None
        try:
            _commit_header(proc.stdin, message, parent)
            for path, size, source in feed:
                proc.stdin.write(f"M 100644 inline {path}\n".encode())
                proc.stdin.write(b"data %d\n" % size)
                if isinstance(source, bytes):
                    proc.stdin.write(source)
                else:
                    remaining = size
                    while remaining:
                        n = min(_CHUNK, remaining)
                        proc.stdin.write(source.randbytes(n))
                        remaining -= n
                proc.stdin.write(b"\n")
            proc.stdin.write(b"done\n")
            proc.stdin.close()
        except BrokenPipeError:
            # fast-import died; its stderr below says why. Drop what's left unflushed.
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        if proc.wait() != 0:
            errors.seek(0)
            detail = errors.read().decode(errors="replace")
            raise RuntimeError(f"git fast-import failed in {repo}: {detail}")


def create_bare_repo(
    root: Path,
    owner: str,
    name: str,
    *,
    object_format: str = "sha1",
    files: dict[str, bytes] | None = None,
) -> Path:
    """Create ``root/owner/name.git`` with one commit on ``main`` holding ``files``."""
    repo = root / owner / f"{name}.git"
    repo.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airlock-git-home-") as home:
        env = git_env(Path(home))
        init = ["init", "--quiet", "--bare", f"--object-format={object_format}", "-b", "main"]
        _run_git([*init, str(repo)], env)
        _run_git([f"--git-dir={repo}", "symbolic-ref", "HEAD", "refs/heads/main"], env)
    if files is None:
        files = {"README.md": f"# {owner}/{name}\n".encode()}
    feed: list[tuple[str, int, random.Random | bytes]] = [
        (path, len(data), data) for path, data in sorted(files.items())
    ]
    _fast_import(repo, feed, b"Initial commit\n", parent=False)
    return repo


def add_large_commit(repo: Path, total_bytes: int, file_count: int = 20, seed: int = 0) -> None:
    """Add a commit on ``main`` with ``file_count`` incompressible files totalling ``total_bytes``.

    ``repo`` is a git directory (a bare repository, or a work tree's ``.git``). Contents are
    streamed from ``random.Random(seed)``, so hundreds of MB to GBs work in flat memory.
    """
    if file_count < 1 or total_bytes < 0:
        raise ValueError("need file_count >= 1 and total_bytes >= 0")
    rng = random.Random(seed)  # noqa: S311 -- test data, not cryptography
    base, extra = divmod(total_bytes, file_count)
    feed: list[tuple[str, int, random.Random | bytes]] = [
        (f"large/{seed}/blob-{i:04d}.bin", base + (1 if i < extra else 0), rng)
        for i in range(file_count)
    ]
    _fast_import(repo, feed, f"Add {total_bytes} random bytes\n".encode(), parent=True)
