"""`airlock supervise`: keep what Docker says and what airlock enforces in agreement.

- a sandbox container that stops (or is killed) gets its session revoked and its network,
  rules, listener and files removed, as soon as Docker reports it;
- a running sandbox whose firewall rules are missing (a Docker daemon restart, an operator's
  `nft flush ruleset`) gets them back;
- leftovers of crashed runs (a network with no container, rules or bundles with no network)
  are removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import docker.errors

from airlock.host import firewall
from airlock.host.control_client import ControlError
from airlock.host.sandbox import LABEL, LABEL_GATEWAY, Sandbox, SandboxError, SandboxManager

# A sandbox younger than this may still be starting: its container may not exist yet.
START_GRACE_SECONDS = 60.0


class Supervisor:
    def __init__(self, manager: SandboxManager, say: Callable[[str], None] = print) -> None:
        self.manager = manager
        self.say = say
        self._stop = threading.Event()

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

    def reconcile(self) -> dict[str, int]:
        m = self.manager
        client = m.client
        counts = {"removed": 0, "restored": 0, "ok": 0}
        nets = {
            (n.get("Labels") or {}).get(LABEL): n
            for n in client.api.networks(filters={"label": [LABEL]})
        }
        for sid in sorted(m.all_sandbox_ids()):
            containers = client.api.containers(all=True, filters={"label": [f"{LABEL}={sid}"]})
            running = [c for c in containers if c.get("State") == "running"]
            net = nets.get(sid)
            if running and net is not None:
                detail = client.api.inspect_network(net["Id"])
                own = {c["Id"] for c in containers}
                foreign = set(detail.get("Containers") or {}) - own
                if foreign:
                    # Someone with Docker access attached another container to a sandbox's
                    # network: it could take the sandbox's address. End the sandbox.
                    self.say(f"sandbox {sid}: foreign container(s) on its network; ending it")
                    self._teardown(sid, "foreign container on the sandbox network")
                    counts["removed"] += 1
                    continue
                sb = _sandbox_from_network(sid, detail)
                rules = m.rules_for(sb)
                if not firewall.verify_rules(rules):
                    firewall.apply_rules(rules)
                    self.say(f"restored firewall rules of sandbox {sid}")
                    counts["restored"] += 1
                with contextlib.suppress(ControlError):
                    m.control.add_listener(str(sb.gateway_ip))
                counts["ok"] += 1
                continue
            if net is not None and not containers:
                full = client.api.inspect_network(net["Id"])
                if self._network_age(full) < START_GRACE_SECONDS:
                    continue  # an `airlock run` may be between network and container
            if any(c.get("State") == "created" for c in containers) and net is not None:
                full = client.api.inspect_network(net["Id"])
                if self._network_age(full) < START_GRACE_SECONDS:
                    continue
            self._teardown(sid, "sandbox stopped (supervisor)")
            self.say(f"cleaned up sandbox {sid}")
            counts["removed"] += 1
        return counts

    def _teardown(self, sid: str, reason: str) -> None:
        # One stuck sandbox must not stop the cleanup of the others.
        try:
            self.manager.teardown(sid, reason)
        except SandboxError as exc:
            self.say(str(exc))

    def _watch_events(self) -> None:
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
                    if event.get("Type") == "network":
                        # A connect to a sandbox network: reconcile checks who joined.
                        if str(attrs.get("name", "")).startswith("airlock-"):
                            self.reconcile()
                        continue
                    sid = attrs.get(LABEL)
                    if sid:
                        self._teardown(sid, f"container {event.get('status')}")
                        self.say(f"sandbox {sid}: container {event.get('status')}; revoked")
            except (docker.errors.DockerException, OSError) as exc:
                self.say(f"docker events interrupted ({exc}); retrying")
                self._stop.wait(2)

    def run(self, interval: float) -> None:
        watcher = threading.Thread(target=self._watch_events, daemon=True)
        watcher.start()
        try:
            while not self._stop.is_set():
                try:
                    self.reconcile()
                except (docker.errors.DockerException, OSError) as exc:
                    self.say(f"reconcile failed ({exc}); retrying")
                self._stop.wait(interval)
        finally:
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()


def _sandbox_from_network(sid: str, net: dict[str, Any]) -> Sandbox:
    import ipaddress

    labels = net.get("Labels") or {}
    subnet = ipaddress.IPv4Network(net["IPAM"]["Config"][0]["Subnet"])
    return Sandbox(
        id=sid,
        name=labels.get("airlock.name", sid),
        network=net["Name"],
        bridge=net["Options"]["com.docker.network.bridge.name"],
        subnet=subnet,
        gateway_ip=ipaddress.IPv4Address(labels[LABEL_GATEWAY]),
        sandbox_ip=ipaddress.IPv4Address(labels["airlock.sandbox_ip"]),
    )
