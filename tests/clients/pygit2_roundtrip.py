"""What a pygit2 (libgit2) user does to reach airlock's gateway from a sandbox: clone, commit,
push, clone again and fetch, printing one ``OK ...`` line per step (``FAIL ...`` and exit 1 on
the first error). Run as a script (also inside sandboxes, so only the standard library and
pygit2):

    python3 pygit2_roundtrip.py BUNDLE_DIR URL WORK_DIR [--no-credentials]

libgit2 cannot present a TLS client certificate, so it answers the gateway's Basic challenge
with the session id and the bundle's ``git-password`` (accepted only from the session's own
sandbox). It reads the bundle's ``gitconfig`` as its system-level config, so the bundle's
``url.insteadOf`` sends the plain GitHub URL to the gateway, and trusts airlock's CA only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pygit2
from pygit2.enums import ConfigLevel


class Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, username: str | None, password: str | None) -> None:
        super().__init__()
        self.username, self.password = username, password
        self.asked = 0
        self.rejected: list[str] = []

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: object
    ) -> pygit2.UserPass:
        self.asked += 1
        if self.username is None or self.password is None or self.asked > 3:
            raise pygit2.GitError("no credentials to offer")
        return pygit2.UserPass(self.username, self.password)

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected.append(f"{refname}: {message}")


def main(argv: list[str]) -> int:
    bundle, url, work = Path(argv[1]), argv[2], Path(argv[3])
    no_credentials = "--no-credentials" in argv
    pygit2.settings.search_path[ConfigLevel.SYSTEM] = str(bundle)  # reads BUNDLE/gitconfig
    for level in (ConfigLevel.GLOBAL, ConfigLevel.XDG):
        pygit2.settings.search_path[level] = str(work / "no-such-dir")
    pygit2.settings.set_ssl_cert_locations(str(bundle / "ca.pem"), None)
    session = json.loads((bundle / "session.json").read_text())["id"]
    password = None if no_credentials else (bundle / "git-password").read_text().strip()

    def cb() -> Callbacks:  # one per operation: each may be asked for credentials anew
        return Callbacks(session, password)

    step = "clone"
    try:
        repo = pygit2.clone_repository(url, str(work / "a"), callbacks=cb())
        print(f"OK clone origin={repo.remotes['origin'].url}", flush=True)
        step = "commit"
        (work / "a" / "from-pygit2.txt").write_text(f"pushed by libgit2 {time.time()}\n")
        repo.index.add("from-pygit2.txt")
        repo.index.write()
        tree = repo.index.write_tree()
        sig = pygit2.Signature("pygit2", "pygit2@sandbox.invalid")
        head = repo.head.target
        commit = repo.create_commit("HEAD", sig, sig, "from pygit2", tree, [head])
        step = "push"
        pushing = cb()
        repo.remotes["origin"].push(["refs/heads/main:refs/heads/main"], callbacks=pushing)
        if pushing.rejected:
            raise pygit2.GitError("push rejected: " + "; ".join(pushing.rejected))
        print(f"OK push {commit}", flush=True)
        step = "clone2"
        other = pygit2.clone_repository(url, str(work / "b"), callbacks=cb())
        print(f"OK clone2 head={other.head.target}", flush=True)
        step = "fetch"
        (work / "a" / "second.txt").write_text("second\n")
        repo.index.add("second.txt")
        repo.index.write()
        second = repo.create_commit(
            "HEAD", sig, sig, "second from pygit2", repo.index.write_tree(), [commit]
        )
        repo.remotes["origin"].push(["refs/heads/main:refs/heads/main"], callbacks=cb())
        other.remotes["origin"].fetch(callbacks=cb())
        fetched = other.references["refs/remotes/origin/main"].target
        print(f"OK fetch {fetched} pushed={second}", flush=True)
    except (pygit2.GitError, KeyError, OSError) as exc:
        print(f"FAIL {step}: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
