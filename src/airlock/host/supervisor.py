"""`airlock supervise`: keep what Docker says and what airlock enforces in agreement, for the
sandboxes of one gateway (those labelled with its id) and no others.

- a sandbox container that exits (or is killed) gets its session revoked and its bundle and
  listener removed as soon as Docker reports it; the container stays (logs, exit code) unless
  it was started with ``--rm`` and no foreground `airlock run` is still waiting for it;
- a removed container takes its network and rules with it;
- a running sandbox whose firewall rules are missing (a Docker daemon restart, an operator's
  `nft flush ruleset`) gets them back;
- leftovers of crashed runs (a network with no container, rules or bundles with no network)
  are removed.

One supervisor per gateway: it holds ``supervise-<gateway id>.lock`` for its life. A detached
`airlock run` with no supervisor running starts one that exits when its gateway has no
sandbox left to watch (``until_idle``); an operator's `airlock supervise` takes over from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors

from airlock.host import firewall
from airlock.host.control_client import ControlError
from airlock.host.locks import host_lock
from airlock.host.rotation import bundle_dirs, bundle_lock_name, refresh
from airlock.host.sandbox import (
    LABEL,
    LABEL_OWNER,
    LABEL_REMOVE,
    SandboxError,
    SandboxManager,
    sandbox_from_network,
)

# A sandbox younger than this may still be starting: its container may not exist yet.
START_GRACE_SECONDS = 60.0
_AUTO_MARK = "until-idle"
UNTIL_IDLE_GATEWAY_GONE = 120.0  # seconds without an answer from the gateway


def lock_path(manager: SandboxManager) -> Path:
    return manager.config.sandbox.bundle_dir.parent / f"supervise-{manager.gateway_id}.lock"


class SupervisorRunning(SandboxError):
    pass


@contextlib.contextmanager
def supervisor_lock(
    manager: SandboxManager, *, until_idle: bool, take_over: bool = True
) -> Iterator[None]:
    """Hold this gateway's supervisor lock. An auto-started supervisor is asked to leave
    (SIGTERM) when an operator's starts; another operator's supervisor is an error."""
    path = lock_path(manager)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    held = False
    try:
        if not _flock_within(fd, 0.3):  # a probe (supervisor_running) holds it for a moment
            holder = os.pread(fd, 100, 0).decode(errors="replace").split()
            pid = int(holder[0]) if holder and holder[0].isdigit() else 0
            auto = len(holder) > 1 and holder[1] == _AUTO_MARK and _is_auto_supervisor(pid)
            if not (auto and take_over and not until_idle and pid > 0):
                raise SupervisorRunning(
                    f"another supervisor (pid {pid or '?'}) is running for gateway "
                    f"{manager.gateway_id}"
                ) from None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SupervisorRunning(
                            f"the auto-started supervisor (pid {pid}) did not stop"
                        ) from None
                    time.sleep(0.05)
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_AUTO_MARK if until_idle else 'operator'}\n".encode(), 0)
        yield
    finally:
        if held:
            os.ftruncate(fd, 0)  # no stale pid for the next one to signal
        os.close(fd)


def _flock_within(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _is_auto_supervisor(pid: int) -> bool:
    """The pid really is an auto-started supervisor (not a process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"supervise" in argv and b"--until-idle" in argv


def supervisor_running(manager: SandboxManager) -> bool:
    try:
        fd = os.open(lock_path(manager), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # Shared: two probes never block each other; a supervisor's exclusive lock does.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ensure_supervisor(manager: SandboxManager, config_path: Path | None) -> bool:
    """Start an `until_idle` supervisor in the background unless one runs; True if started.

    So a detached sandbox's session is revoked the moment its container exits even when no
    operator runs `airlock supervise`."""
    if supervisor_running(manager):
        return False
    log = manager.config.sandbox.bundle_dir.parent / f"supervise-{manager.gateway_id}.log"
    # -P and cwd "/": `-m` would otherwise put the caller's working directory (perhaps a
    # sandbox's writable workspace) first on sys.path of a root process.
    argv = [sys.executable, "-P", "-m", "airlock.cli", "supervise", "--until-idle"]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    with open(log, "ab") as out:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    # Until it holds the lock, a second `run -d` would start another; it takes ~0.3 s.
    deadline = time.monotonic() + 5
    while not supervisor_running(manager) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


class Supervisor:
    def __init__(self, manager: SandboxManager, say: Callable[[str], None] = print) -> None:
        self.manager = manager
        self.say = say
        self._stop = threading.Event()
        self._trust_written: tuple[str, ...] | None = None  # the CAs last put in bundles

    def _network_age(self, net: dict[str, Any]) -> float:
        created = str(net.get("Created", ""))
        try:
            # Docker prints nanoseconds; Python parses microseconds.
            stamp = dt.datetime.fromisoformat(
                created[:26] + created[-6:] if "+" in created[-6:] else created[:26]
            )
        except ValueError:
            return START_GRACE_SECONDS + 1
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return (dt.datetime.now(dt.UTC) - stamp).total_seconds()

    def _young(self, net: dict[str, Any] | None) -> bool:
        if net is None:
            return False
        full = self.manager.client.api.inspect_network(net["Id"])
        return self._network_age(full) < START_GRACE_SECONDS

    def reconcile(self) -> dict[str, int]:
        m = self.manager
        client = m.client
        counts = {"removed": 0, "restored": 0, "released": 0, "ok": 0}
        nets = {(n.get("Labels") or {}).get(LABEL): n for n in m.own_networks()}
        try:
            sessions: list[dict[str, Any]] | None = m.control.list_sessions()
        except ControlError:
            sessions = None
        if sessions is not None:
            self._refresh_trust(sessions)
        spares = m.spare_ids()
        for sid in sorted(m.all_sandbox_ids()):
            containers = m._find_containers(sandbox=sid)
            if sid in spares and not containers and nets.get(sid) is not None:
                self._check_spare(sid, nets[sid], counts)
                continue
            running = [c for c in containers if c.get("State") == "running"]
            net = nets.get(sid)
            if net is None and sid not in nets:
                # Listed before this sandbox existed? Ask again, so a start in progress is
                # not taken for a leftover.
                found = m.own_networks(sid)
                net = found[0] if found else None
            if running and net is not None:
                detail = client.api.inspect_network(net["Id"])
                own = {c["Id"] for c in containers}
                sb = sandbox_from_network(sid, detail)
                if sb.bridged:  # the gateway's container belongs on it, at its address
                    with contextlib.suppress(SandboxError):
                        own.add(m.gateway_container())
                foreign = set(detail.get("Containers") or {}) - own
                if foreign:
                    # Someone with Docker access attached another container to a sandbox's
                    # network: it could take the sandbox's address. End the sandbox.
                    self.say(f"sandbox {sid}: foreign container(s) on its network; ending it")
                    self._teardown(sid, "foreign container on the sandbox network")
                    counts["removed"] += 1
                    continue
                rules = m.rules_for(sb)
                if not firewall.verify_rules(rules):
                    firewall.apply_rules(rules)
                    self.say(f"restored firewall rules of sandbox {sid}")
                    counts["restored"] += 1
                if sb.bridged and not firewall.bridge_netfilter_on(sb.bridge):
                    firewall.ensure_bridge_netfilter(sb.bridge)
                    self.say(f"bridged traffic of sandbox {sid} passes the firewall again")
                    counts["restored"] += 1
                with contextlib.suppress(ControlError, SandboxError):
                    if sb.bridged:  # a re-created gateway container lost its networks
                        m._join_gateway(sb)
                    m.control.add_listener(str(sb.gateway_ip))
                counts["ok"] += 1
                continue
            if containers:
                if any(_starting(c) for c in containers):
                    continue  # an `airlock run` between create and start
                if self._exited(sid, containers, sessions):
                    counts["removed"] += 1
                else:
                    counts["released"] += 1
                continue
            if m.claimed_recently(sid, START_GRACE_SECONDS):
                continue  # a start claimed this spare network and is creating its container
            if not m.is_held(sid) and not self._young(net):
                self._teardown(sid, "sandbox stopped (supervisor)")
                self.say(f"cleaned up sandbox {sid}")
                counts["removed"] += 1
        return counts

    def _refresh_trust(self, sessions: list[dict[str, Any]]) -> None:
        """Once a CA rotation's overlap is over, the sandboxes' bundles trust the new CA
        alone (what `airlock rotate bundles` does), written when the gateway's set of CAs
        changes; during a rotation (prepared, overlap) `airlock rotate ca` owns them."""
        m = self.manager
        try:
            state = m.control.rotation()
        except ControlError:
            return
        cas = tuple(str(f) for f in state.get("ca_fingerprints") or ())
        if state.get("phase") != "idle" or not cas or cas == self._trust_written:
            return
        try:
            # Under the bundles' lock, the state and sessions once more: a `rotate ca` may
            # have prepared (and rewritten the bundles) since they were read.
            with host_lock(bundle_lock_name(m.gateway_id)):
                state = m.control.rotation()
                if state.get("phase") != "idle":
                    return
                sessions = m.control.list_sessions()
                report = refresh(bundle_dirs(m.bundle_root), sessions, state)
        except (ControlError, OSError) as exc:
            self.say(f"cannot rewrite sandbox bundles after the CA rotation: {exc}")
            return
        if report.updated:
            self.say(f"{len(report.updated)} sandbox bundle(s) now trust the current CA only")
        if not report.problems:  # else: tried again on the next pass
            self._trust_written = tuple(str(f) for f in state.get("ca_fingerprints") or ())

    def _check_spare(self, sid: str, net: dict[str, Any], counts: dict[str, int]) -> None:
        """A spare network's rules are kept as a running sandbox's are."""
        m = self.manager
        rules = m.rules_for(sandbox_from_network(sid, m.client.api.inspect_network(net["Id"])))
        if not firewall.verify_rules(rules):
            firewall.apply_rules(rules)
            self.say(f"restored firewall rules of spare network {sid}")
            counts["restored"] += 1

    def prepare_spares(self) -> None:
        try:
            made = self.manager.prepare_spares(self.manager.config.sandbox.spare_networks)
        except SandboxError as exc:
            self.say(f"cannot prepare a spare network: {exc}")
            return
        if made:
            self.say(f"prepared {made} spare network(s)")

    def _exited(
        self,
        sid: str,
        containers: list[dict[str, Any]],
        sessions: list[dict[str, Any]] | None = None,
    ) -> bool:
        """A sandbox whose container is not running: release it; remove it if --rm and no
        foreground run waits for it. True if removed."""
        remove = any((c.get("Labels") or {}).get(LABEL_REMOVE) == "1" for c in containers)
        if remove and not self.manager.is_held(sid):
            self._teardown(sid, "sandbox exited (supervisor)")
            return True
        try:
            if self.manager.release(sid, "sandbox exited (supervisor)", sessions=sessions):
                self.say(f"sandbox {sid}: exited; session revoked")
        except SandboxError as exc:
            self.say(str(exc))
        return False

    def _teardown(self, sid: str, reason: str) -> None:
        # One stuck sandbox must not stop the cleanup of the others.
        try:
            self.manager.teardown(sid, reason)
        except SandboxError as exc:
            self.say(str(exc))

    def _on_event(self, event: dict[str, Any]) -> None:
        attrs = event.get("Actor", {}).get("Attributes") or {}
        if event.get("Type") == "network":
            # A connect to one of our sandbox networks: reconcile checks who joined.
            if str(attrs.get("name", "")).startswith("airlock-"):
                self.reconcile()
            return
        sid = attrs.get(LABEL)
        if not sid or attrs.get(LABEL_OWNER) != self.manager.gateway_id:
            return  # another gateway's sandbox, or not a sandbox
        status = event.get("status") or event.get("Action")
        if status == "destroy":
            self._teardown(sid, "container removed")
            self.say(f"sandbox {sid}: container removed; cleaned up")
            return
        containers = [{"Labels": attrs}]
        self._exited(sid, containers)

    def _watch_events(self) -> None:
        gid = self.manager.gateway_id
        while not self._stop.is_set():
            try:
                events = self.manager.client.events(
                    decode=True,
                    filters={
                        "type": ["container", "network"],
                        "event": ["die", "destroy", "connect"],
                    },
                )
                for event in events:
                    if self._stop.is_set():
                        break
                    attrs = event.get("Actor", {}).get("Attributes") or {}
                    if event.get("Type") == "container" and attrs.get(LABEL_OWNER) != gid:
                        continue
                    self._on_event(event)
            except (docker.errors.DockerException, OSError) as exc:
                self.say(f"docker events interrupted ({exc}); retrying")
                self._stop.wait(2)

    def _idle(self) -> bool:
        """Nothing of this gateway's left to watch: no container running or starting."""
        m = self.manager
        for c in m.list(all=True):
            if c.get("State") in ("running", "created", "restarting"):
                return False
        return not any(m.is_held(sid) for sid in m.all_sandbox_ids())

    def run(self, interval: float, *, until_idle: bool = False) -> None:
        watcher = threading.Thread(target=self._watch_events, daemon=True)
        watcher.start()
        signal_stop = None
        if threading.current_thread() is threading.main_thread():
            signal_stop = signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        unreachable_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    self.reconcile()
                    if not until_idle:  # spares are for an operator's supervisor only
                        self.prepare_spares()
                    if until_idle and self._idle():
                        self.say("no sandbox left to watch; the supervisor exits")
                        return
                except (docker.errors.DockerException, OSError) as exc:
                    self.say(f"reconcile failed ({exc}); retrying")
                if until_idle:
                    # An auto-started supervisor whose gateway is gone for good (its sessions
                    # with it) has nothing left to revoke: it does not linger forever.
                    try:
                        self.manager.control.health()
                        unreachable_since = None
                    except ControlError:
                        unreachable_since = unreachable_since or time.monotonic()
                        if time.monotonic() - unreachable_since > UNTIL_IDLE_GATEWAY_GONE:
                            self.say("the gateway is gone; the supervisor exits")
                            return
                self._stop.wait(interval)
        finally:
            self._stop.set()
            if signal_stop is not None:
                signal.signal(signal.SIGTERM, signal_stop)

    def stop(self) -> None:
        self._stop.set()


def _starting(container: dict[str, Any]) -> bool:
    """Created, not yet started, and young: a start is between create and start. (By the
    container's own age: the network may be a spare made long before.)"""
    created = container.get("Created")
    age = time.time() - created if isinstance(created, int | float) else START_GRACE_SECONDS
    return container.get("State") == "created" and age < START_GRACE_SECONDS
