"""Per-sandbox host firewall rules, in nftables' ``inet airlock`` table.

What the rules enforce, for packets arriving on a sandbox's bridge (``al-…``): the only thing
that passes is sandbox address -> gateway address on the gateway's TCP/UDP ports (plus
conntrack-established/related traffic between the same two addresses). Everything else from
that bridge is dropped: other source addresses (spoofing), other host addresses and services,
all IPv6, and anything routed (to other sandboxes, other networks, the outside). Nothing is
routed *into* a sandbox bridge either. And the gateway's address on that bridge answers only
packets that arrived on that bridge (or from the host itself, via ``lo``): so the gateway can
trust that a connection to that address came from that sandbox's network, which is what binds a
session to its network.

With the gateway in a container on the sandbox's bridge (``bridged``; gateway.mode =
"container") the same holds one layer down: the sandbox's packets to the gateway container's
address cross the bridge (br_netfilter hands bridged IPv4 to these hooks, with the bridge as
both interfaces), the sandbox may open connections to its ports only, the gateway container may
only answer, and neither reaches anything on the host (its address on the bridge included).

Why nftables, in a table of our own:

* **Separate table.** Docker 20.10 writes its rules with ``iptables`` (here the iptables-nft
  backend: tables ``ip filter``/``ip nat``) and rewrites its chains when it restarts or creates
  networks. Our own ``inet airlock`` table is never touched by Docker, and we never touch
  Docker's. ``inet`` covers IPv4 and IPv6 with one set of chains.
* **Atomic transactions.** Each change (one sandbox added, replaced or removed) is one
  ``nft -j -f -`` batch: the kernel applies all of it or none, so there is no moment with half a
  sandbox's rules, and a failure leaves the previous state intact.
* **Coexistence with Docker, and why a drop here is enough.** Every base chain registered at a
  hook sees the packet, in priority order, whatever table it lives in. A ``drop`` verdict in any
  of them is final; an ``accept`` only ends *that* chain, and the packet goes on to the next
  base chain (Docker's ``FORWARD``, the ``INPUT`` chains of others). Our chains hook at
  ``filter - 10`` (and a guard at ``raw``), i.e. before Docker's ``filter`` chains, so our drops
  cannot be undone by anything Docker does, while our accepts take nothing away from Docker's
  own isolation rules, which stay as a second layer.

Layout of the table::

    chain prerouting  (filter hook prerouting priority raw = -300, policy accept)
        iifname "al-x" jump sbx_<name>_pre       # one per sandbox, comment "airlock:<name>"
        ip daddr <gw> jump sbx_<name>_dst        # the gateway address: from al-x or lo only
        iifname "al-*" drop                      # guard: a bridge without rules is closed
    chain input       (filter hook input priority filter - 10, policy accept)
        iifname "al-x" jump sbx_<name>_in
        iifname "al-*" drop
    chain forward     (filter hook forward priority filter - 10, policy accept)
        iifname "al-x" jump sbx_<name>_fwd
        oifname "al-x" jump sbx_<name>_fwd
        iifname "al-*" drop
        oifname "al-*" drop

The ``prerouting`` chain runs before conntrack and before Docker's DNAT (``nat`` PREROUTING), so
spoofed or misdirected packets never create conntrack entries or get rewritten towards a
published port elsewhere. Every rule matches a bridge name starting with ``al-`` or the
gateway address of such a bridge (an address from airlock's pool, on that bridge only), so the
host's own traffic is never matched. All access goes through a process-wide lock file so that two
airlock processes do not interleave read-modify-write cycles.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from airlock.host.locks import host_lock

__all__ = [
    "BRIDGE_PREFIX",
    "FAMILY",
    "TABLE",
    "FirewallError",
    "GatewayNetRules",
    "SandboxRules",
    "apply_gateway_rules",
    "apply_rules",
    "bridge_netfilter_on",
    "ensure_bridge_netfilter",
    "list_sandbox_rule_names",
    "remove_gateway_rules",
    "remove_rules",
    "verify_gateway_rules",
    "verify_rules",
]

FAMILY = "inet"
TABLE = "airlock"
BRIDGE_PREFIX = "al-"

# name -> (hook, priority). raw = -300, filter = 0.
_BASE_CHAINS: dict[str, tuple[str, int]] = {
    "prerouting": ("prerouting", -300),
    "input": ("input", -10),
    "forward": ("forward", -10),
}
_GUARD_COMMENT = "airlock:guard"
_SUFFIXES = ("pre", "dst", "in", "fwd")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,47}")
_OWNER_RE = re.compile(r"[0-9a-f]{16}")
_COMMENT_RE = re.compile(
    r"airlock:(?P<name>[a-z0-9][a-z0-9_.-]{0,47})(?: owner:(?P<owner>[0-9a-f]{16}))?"
)
# Linux interface names are at most 15 bytes; no "*" or "\" (nft wildcards/escapes).
_BRIDGE_RE = re.compile(r"al-[a-z0-9_.-]{1,12}")
_CHAIN_RE = re.compile(r"sbx_(?P<name>.+)_(?P<suffix>pre|dst|in|fwd)")

Expr = dict[str, Any]


class FirewallError(RuntimeError):
    """nft failed, or the request conflicts with rules already in place."""


@dataclass(frozen=True)
class SandboxRules:
    name: str
    bridge: str
    subnet: IPv4Network
    gateway_ip: IPv4Address
    sandbox_ip: IPv4Address
    tcp_ports: list[int]
    udp_ports: list[int]
    # The gateway id this sandbox belongs to, kept in every rule's comment: two gateways on
    # one host share this table, and each may touch only its own sandboxes' rules.
    owner: str = ""
    # The gateway is a container on the sandbox's bridge (gateway.mode = "container"): the
    # sandbox talks to it across the bridge, and to nothing on the host at all.
    bridged: bool = False

    def __post_init__(self) -> None:
        if self.owner and not _OWNER_RE.fullmatch(self.owner):
            raise ValueError(f"bad owner {self.owner!r}: want {_OWNER_RE.pattern}")
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"bad sandbox name {self.name!r}: want {_NAME_RE.pattern}")
        if not _BRIDGE_RE.fullmatch(self.bridge):
            raise ValueError(f"bad bridge name {self.bridge!r}: want {_BRIDGE_RE.pattern}")
        for addr in (self.gateway_ip, self.sandbox_ip):
            if addr not in self.subnet:
                raise ValueError(f"{addr} is not in {self.subnet}")
        if self.gateway_ip == self.sandbox_ip:
            raise ValueError("gateway and sandbox addresses must differ")
        for port in [*self.tcp_ports, *self.udp_ports]:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"bad port {port!r}")
        # Sorted and deduplicated, so equal port sets give equal rules (and verify compares them).
        object.__setattr__(self, "tcp_ports", sorted(set(self.tcp_ports)))
        object.__setattr__(self, "udp_ports", sorted(set(self.udp_ports)))


# --- pure: the rules as nft JSON ------------------------------------------------------------
# Expressions are written in the canonical form `nft -j list` prints them in, so that
# verify_rules can compare what is in the kernel with what we meant, exactly.


def _chain_name(name: str, suffix: str) -> str:
    return f"sbx_{name}_{suffix}"


def _comment(name: str, owner: str = "") -> str:
    return f"airlock:{name} owner:{owner}" if owner else f"airlock:{name}"


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _set_key(value: Any) -> tuple[int, int, str]:
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


def _canon(obj: Any) -> Any:
    """Sort the members of anonymous sets: nft does not keep them in a predictable order."""
    if isinstance(obj, list):
        return [_canon(x) for x in obj]
    if isinstance(obj, dict):
        out = {k: _canon(v) for k, v in obj.items()}
        if isinstance(out.get("set"), list):
            out["set"] = sorted(out["set"], key=_set_key)
        return out
    return obj


def _ports(ports: list[int]) -> Any:
    return ports[0] if len(ports) == 1 else {"set": list(ports)}


_DROP: Expr = {"drop": None}
_ACCEPT: Expr = {"accept": None}
_IPV6_DROP = [_match(_meta("nfproto"), "ipv6"), _DROP]


def sandbox_chains(r: SandboxRules) -> dict[str, list[list[Expr]]]:
    """The sandbox's own chains and their rules (each rule a list of expressions)."""
    src = _match(_payload("ip", "saddr"), str(r.sandbox_ip))
    dst = _match(_payload("ip", "daddr"), str(r.gateway_ip))
    if r.bridged:
        return {name: [_canon(rule) for rule in rules] for name, rules in _bridged(r).items()}
    pre = [
        _IPV6_DROP,
        [_match(_payload("ip", "saddr"), str(r.sandbox_ip), "!="), _DROP],
        [_match(_payload("ip", "daddr"), str(r.gateway_ip), "!="), _DROP],
        # Ends our prerouting chain only; the packet still meets input/forward below.
        [_ACCEPT],
    ]
    gw_only_here = [
        # Anything reaching the gateway address from elsewhere (another sandbox, a Docker
        # network, the LAN routing towards us) is dropped; the host itself may connect.
        [_match(_meta("iifname"), {"set": ["lo", r.bridge]}), {"return": None}],
        [_DROP],
    ]
    inp = [
        _IPV6_DROP,
        [src, dst, _match({"ct": {"key": "state"}}, ["established", "related"], "in"), _ACCEPT],
    ]
    if r.tcp_ports:
        inp.append([src, dst, _match(_payload("tcp", "dport"), _ports(r.tcp_ports)), _ACCEPT])
    if r.udp_ports:
        inp.append([src, dst, _match(_payload("udp", "dport"), _ports(r.udp_ports)), _ACCEPT])
    inp.append([_DROP])
    fwd = [[_DROP]]  # a sandbox talks to the gateway on the host, never through it
    chains = {
        _chain_name(r.name, "pre"): pre,
        _chain_name(r.name, "dst"): gw_only_here,
        _chain_name(r.name, "in"): inp,
        _chain_name(r.name, "fwd"): fwd,
    }
    return {name: [_canon(rule) for rule in rules] for name, rules in chains.items()}


def _bridged(r: SandboxRules) -> dict[str, list[list[Expr]]]:
    """The chains when the gateway is a container on the bridge.

    Bridged IPv4 frames pass the inet hooks (br_netfilter, switched on for the bridge by
    :func:`ensure_bridge_netfilter`) with the bridge as both input and output interface, so
    ``prerouting`` and ``forward`` see every packet between the two containers. The sandbox
    may open connections to the gateway's ports and nothing else; the gateway may only answer
    (conntrack). The host's own address on the bridge (Docker's bridge gateway) answers
    nothing, from either of them.
    """
    src = _match(_payload("ip", "saddr"), str(r.sandbox_ip))
    dst = _match(_payload("ip", "daddr"), str(r.gateway_ip))
    back_src = _match(_payload("ip", "saddr"), str(r.gateway_ip))
    back_dst = _match(_payload("ip", "daddr"), str(r.sandbox_ip))
    across = [_match(_meta("iifname"), r.bridge), _match(_meta("oifname"), r.bridge)]
    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    pre = [
        _IPV6_DROP,
        # The gateway's answers (and nothing else it sends: checked by state in forward).
        [back_src, back_dst, _ACCEPT],
        [_match(_payload("ip", "saddr"), str(r.sandbox_ip), "!="), _DROP],
        [_match(_payload("ip", "daddr"), str(r.gateway_ip), "!="), _DROP],
        [_ACCEPT],
    ]
    gw_only_here = [
        [_match(_meta("iifname"), {"set": ["lo", r.bridge]}), {"return": None}],
        [_DROP],
    ]
    fwd: list[list[Expr]] = [
        [*across, src, dst, established, _ACCEPT],
        [*across, back_src, back_dst, established, _ACCEPT],
    ]
    if r.tcp_ports:
        fwd.append(
            [*across, src, dst, _match(_payload("tcp", "dport"), _ports(r.tcp_ports)), _ACCEPT]
        )
    if r.udp_ports:
        fwd.append(
            [*across, src, dst, _match(_payload("udp", "dport"), _ports(r.udp_ports)), _ACCEPT]
        )
    fwd.append([_DROP])
    return {
        _chain_name(r.name, "pre"): pre,
        _chain_name(r.name, "dst"): gw_only_here,
        _chain_name(r.name, "in"): [_IPV6_DROP, [_DROP]],  # nothing on the host, at all
        _chain_name(r.name, "fwd"): fwd,
    }


def _jump(interface_key: str, bridge: str, target: str) -> list[Expr]:
    return [_match(_meta(interface_key), bridge), {"jump": {"target": target}}]


def jump_rules(r: SandboxRules) -> list[tuple[str, list[Expr]]]:
    """(base chain, rule) pairs that send the bridge's packets to the sandbox's chains."""
    fwd = _chain_name(r.name, "fwd")
    return [
        ("prerouting", _jump("iifname", r.bridge, _chain_name(r.name, "pre"))),
        (
            "prerouting",
            [
                _match(_payload("ip", "daddr"), str(r.gateway_ip)),
                {"jump": {"target": _chain_name(r.name, "dst")}},
            ],
        ),
        ("input", _jump("iifname", r.bridge, _chain_name(r.name, "in"))),
        ("forward", _jump("iifname", r.bridge, fwd)),
        ("forward", _jump("oifname", r.bridge, fwd)),
    ]


def guard_rules() -> list[tuple[str, list[Expr]]]:
    """Fail closed: an airlock bridge that has no sandbox rules (yet, or any more) is cut off."""
    wildcard = f"{BRIDGE_PREFIX}*"
    return [
        ("prerouting", [_match(_meta("iifname"), wildcard), _DROP]),
        ("input", [_match(_meta("iifname"), wildcard), _DROP]),
        ("forward", [_match(_meta("iifname"), wildcard), _DROP]),
        ("forward", [_match(_meta("oifname"), wildcard), _DROP]),
    ]


def _base_chain_obj(name: str) -> Expr:
    hook, prio = _BASE_CHAINS[name]
    return {
        "family": FAMILY,
        "table": TABLE,
        "name": name,
        "type": "filter",
        "hook": hook,
        "prio": prio,
        "policy": "accept",
    }


def _rule_obj(chain: str, expr: list[Expr], comment: str, handle: int | None = None) -> Expr:
    obj: Expr = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    obj["comment"] = comment
    if handle is not None:
        obj["handle"] = handle
    return obj


# --- reading the kernel's state -------------------------------------------------------------


@dataclass
class _Rule:
    chain: str
    handle: int
    comment: str | None
    expr: list[Expr]

    def jump_target(self) -> str | None:
        for e in self.expr:
            if "jump" in e:
                target = e["jump"].get("target")
                return target if isinstance(target, str) else None
        return None

    def interface_match(self) -> str | None:
        for e in self.expr:
            m = e.get("match")
            if m and m.get("left", {}).get("meta", {}).get("key") in ("iifname", "oifname"):
                right = m.get("right")
                return right if isinstance(right, str) else None
        return None


@dataclass
class _State:
    chains: dict[str, Expr]
    rules: dict[str, list[_Rule]]  # chain -> rules in order

    def base_rules(self) -> Iterator[_Rule]:
        for chain in _BASE_CHAINS:
            yield from self.rules.get(chain, [])


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # C locale: _read_state recognises "table absent" by nft's (untranslated) error text.
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        ["nft", *args], input=stdin, capture_output=True, text=True, check=False, env=env
    )


def _read_state() -> _State | None:
    proc = _nft(["-j", "list", "table", FAMILY, TABLE])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise FirewallError(f"nft list table failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    chains: dict[str, Expr] = {}
    rules: dict[str, list[_Rule]] = {}
    for item in data.get("nftables", []):
        if "chain" in item:
            chains[item["chain"]["name"]] = item["chain"]
        elif "rule" in item:
            rule = item["rule"]
            rules.setdefault(rule["chain"], []).append(
                _Rule(rule["chain"], int(rule["handle"]), rule.get("comment"), _canon(rule["expr"]))
            )
    return _State(chains, rules)


def _run_batch(commands: list[Expr]) -> None:
    payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    proc = _nft(["-j", "-f", "-"], stdin=payload)
    if proc.returncode != 0:
        raise FirewallError(f"nft transaction failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with host_lock("firewall.lock"):
        yield


def _sandbox_chain_names(name: str) -> list[str]:
    return [_chain_name(name, s) for s in _SUFFIXES]


def _rule_ref(chain: str, handle: int) -> Expr:
    return {"family": FAMILY, "table": TABLE, "chain": chain, "handle": handle}


def _delete_jump_commands(state: _State, name: str) -> list[Expr]:
    """Delete (by handle) every base-chain rule that jumps to sandbox ``name``'s chains."""
    mine = set(_sandbox_chain_names(name))
    return [
        {"delete": {"rule": _rule_ref(x.chain, x.handle)}}
        for x in state.base_rules()
        if x.jump_target() in mine
    ]


def _delete_chain_commands(state: _State, name: str) -> list[Expr]:
    commands: list[Expr] = []
    for chain in _sandbox_chain_names(name):
        if chain in state.chains:
            ref = {"family": FAMILY, "table": TABLE, "name": chain}
            commands += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
    return commands


# --- public API -----------------------------------------------------------------------------


def apply_rules(r: SandboxRules) -> None:
    """Install (or replace) the sandbox's rules in one atomic transaction. Idempotent."""
    with _locked():
        state = _read_state() or _State({}, {})
        mine = set(_sandbox_chain_names(r.name))
        for rule in state.base_rules():
            target = rule.jump_target()
            if rule.interface_match() == r.bridge and target is not None and target not in mine:
                raise FirewallError(f"bridge {r.bridge} already belongs to chain {target}")

        commands: list[Expr] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        commands += [{"add": {"chain": _base_chain_obj(c)}} for c in _BASE_CHAINS]
        for chain, expr in guard_rules():
            if not any(x.expr == expr for x in state.rules.get(chain, [])):
                commands.append({"add": {"rule": _rule_obj(chain, expr, _GUARD_COMMENT)}})
        # Replace rather than patch: drop the old jumps by handle; the sandbox chains are
        # flushed and refilled. All in the same batch, so the swap is atomic.
        commands += _delete_jump_commands(state, r.name)
        comment = _comment(r.name, r.owner)
        for chain, rules in sandbox_chains(r).items():
            ref = {"family": FAMILY, "table": TABLE, "name": chain}
            commands.append({"add": {"chain": ref}})
            commands.append({"flush": {"chain": ref}})
            commands += [{"add": {"rule": _rule_obj(chain, expr, comment)}} for expr in rules]
        # `insert` puts the jumps at the head of the base chains, ahead of the guards.
        for chain, expr in jump_rules(r):
            commands.append({"insert": {"rule": _rule_obj(chain, expr, comment)}})
        _run_batch(commands)


def remove_rules(name: str) -> None:
    """Remove every rule and chain of sandbox ``name`` atomically. No-op if there are none."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad sandbox name {name!r}")
    with _locked():
        state = _read_state()
        if state is None:
            return
        # Jumps go first: a chain that is still referenced cannot be deleted.
        commands = _delete_jump_commands(state, name) + _delete_chain_commands(state, name)
        if commands:
            _run_batch(commands)


def verify_rules(r: SandboxRules) -> bool:
    """True when the kernel holds exactly the rules :func:`apply_rules` would install for ``r``.

    Checks the base chains (hook, priority, policy), the guards, the sandbox's own chains rule
    by rule, that each jump exists once and ahead of the guards, and that no other rule in a
    base chain mentions the bridge or jumps into the sandbox's chains.
    """
    with _locked():
        state = _read_state()
    if state is None:
        return False
    for base in _BASE_CHAINS:
        have, want = state.chains.get(base), _base_chain_obj(base)
        if have is None or any(have.get(k) != want[k] for k in ("type", "hook", "prio", "policy")):
            return False
    comment = _comment(r.name, r.owner)
    for chain, want_rules in sandbox_chains(r).items():
        if chain not in state.chains:
            return False
        got = [(x.expr, x.comment) for x in state.rules.get(chain, [])]
        if got != [(e, comment) for e in want_rules]:
            return False
    first_guard: dict[str, int] = {}
    for chain, expr in guard_rules():
        rules = state.rules.get(chain, [])
        hits = [i for i, x in enumerate(rules) if x.expr == expr and x.comment == _GUARD_COMMENT]
        if not hits:
            return False
        first_guard[chain] = min(hits[0], first_guard.get(chain, hits[0]))
    for chain, expr in jump_rules(r):
        rules = state.rules.get(chain, [])
        hits = [i for i, x in enumerate(rules) if x.expr == expr and x.comment == comment]
        if len(hits) != 1 or hits[0] > first_guard[chain]:
            return False
    mine = set(_sandbox_chain_names(r.name))
    expected = {(c, json.dumps(e, sort_keys=True)) for c, e in jump_rules(r)}
    for rule in state.base_rules():
        relevant = rule.interface_match() == r.bridge or rule.jump_target() in mine
        if relevant and (rule.chain, json.dumps(rule.expr, sort_keys=True)) not in expected:
            return False
    return True


# --- bridged traffic through the inet hooks ---------------------------------------------------
# The bridged rules see packets between two containers on one bridge only when br_netfilter
# hands them to the IP hooks. Docker used to turn that on host-wide; newer Docker does so only
# for ICC-off networks, and a distribution may turn it off. A container-mode sandbox bridge
# therefore gets it switched on for itself (the per-bridge option, OR'd with the global one),
# read back, before anything runs on it: without it every bridged rule would be skipped.

_BRIDGE_NF = ("nf_call_iptables", "nf_call_ip6tables")


def _bridge_option(bridge: str, name: str) -> Path:
    if not _BRIDGE_RE.fullmatch(bridge):
        raise ValueError(f"bad bridge name {bridge!r}")
    return Path("/sys/class/net") / bridge / "bridge" / name


def bridge_netfilter_on(bridge: str) -> bool:
    """True when the bridge's IPv4 and IPv6 frames pass the inet hooks (our rules)."""
    try:
        return all(_bridge_option(bridge, n).read_text().strip() == "1" for n in _BRIDGE_NF)
    except OSError:
        return False


def ensure_bridge_netfilter(bridge: str) -> None:
    """Switch br_netfilter on for ``bridge`` and check it took (FirewallError otherwise)."""
    if not Path("/proc/sys/net/bridge").is_dir():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    for name in _BRIDGE_NF:
        try:
            _bridge_option(bridge, name).write_text("1")
        except OSError as exc:
            raise FirewallError(
                f"cannot pass bridge {bridge}'s traffic through the firewall ({name}: "
                f"{exc.strerror}); load br_netfilter (modprobe br_netfilter)"
            ) from None
    if not bridge_netfilter_on(bridge):
        raise FirewallError(f"bridge {bridge}: br_netfilter did not turn on; not starting")


# --- the gateway container's own network -----------------------------------------------------
# Its NAT'd bridge carries the gateway's traffic to the upstreams (forwarded, out of the host).
# Nothing of the host's own is for it: packets it sends to any host address (its bridge's, a
# sandbox bridge's, the LAN's) meet ``input`` with this bridge as their interface and are
# dropped, but for answers on connections the host opened (its published git port) and the
# ports named in gateway.container.host_ports on its bridge's host address (a host-local
# upstream or mirror).

_GW_CHAIN_RE = re.compile(r"gwc_(?P<name>[a-z0-9][a-z0-9_.-]{0,40})_in")
# Docker's own bridge names ("br-" + 12 hex digits of the network id), or one given.
_GW_BRIDGE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,14}")


@dataclass(frozen=True)
class GatewayNetRules:
    name: str  # the gateway container's name
    bridge: str
    host_ip: IPv4Address  # the host's address on that bridge
    host_ports: list[int]

    def __post_init__(self) -> None:
        if not _GW_CHAIN_RE.fullmatch(f"gwc_{self.name}_in"):
            raise ValueError(f"bad gateway container name {self.name!r}")
        if not _GW_BRIDGE_RE.fullmatch(self.bridge) or self.bridge.startswith(BRIDGE_PREFIX):
            raise ValueError(f"bad gateway bridge name {self.bridge!r}")
        for port in self.host_ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"bad port {port!r}")
        object.__setattr__(self, "host_ports", sorted(set(self.host_ports)))

    @property
    def chain(self) -> str:
        return f"gwc_{self.name}_in"

    @property
    def comment(self) -> str:
        return f"airlock-gateway:{self.name}"


def gateway_chain(r: GatewayNetRules) -> list[list[Expr]]:
    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    rules: list[list[Expr]] = [_IPV6_DROP, [established, _ACCEPT]]
    if r.host_ports:
        rules.append(
            [
                _match(_payload("ip", "daddr"), str(r.host_ip)),
                _match(_payload("tcp", "dport"), _ports(r.host_ports)),
                _ACCEPT,
            ]
        )
    rules.append([_DROP])
    return [_canon(rule) for rule in rules]


def _gateway_jump(r: GatewayNetRules) -> list[Expr]:
    return _jump("iifname", r.bridge, r.chain)


def apply_gateway_rules(r: GatewayNetRules) -> None:
    """Install (or replace) the gateway network's input rules in one transaction."""
    with _locked():
        state = _read_state() or _State({}, {})
        commands: list[Expr] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        commands += [{"add": {"chain": _base_chain_obj(c)}} for c in _BASE_CHAINS]
        commands += [
            {"delete": {"rule": _rule_ref(x.chain, x.handle)}}
            for x in state.base_rules()
            if x.jump_target() == r.chain
        ]
        ref = {"family": FAMILY, "table": TABLE, "name": r.chain}
        commands += [{"add": {"chain": ref}}, {"flush": {"chain": ref}}]
        commands += [{"add": {"rule": _rule_obj(r.chain, e, r.comment)}} for e in gateway_chain(r)]
        commands.append({"insert": {"rule": _rule_obj("input", _gateway_jump(r), r.comment)}})
        _run_batch(commands)


def verify_gateway_rules(r: GatewayNetRules) -> bool:
    with _locked():
        state = _read_state()
    if state is None or r.chain not in state.chains:
        return False
    got = [(x.expr, x.comment) for x in state.rules.get(r.chain, [])]
    if got != [(e, r.comment) for e in gateway_chain(r)]:
        return False
    jumps = [x for x in state.rules.get("input", []) if x.jump_target() == r.chain]
    return len(jumps) == 1 and jumps[0].expr == _canon(_gateway_jump(r))


def remove_gateway_rules(name: str) -> None:
    """Remove the gateway network's rules of container ``name``; no-op if there are none."""
    chain = f"gwc_{name}_in"
    if not _GW_CHAIN_RE.fullmatch(chain):
        raise ValueError(f"bad gateway container name {name!r}")
    with _locked():
        state = _read_state()
        if state is None:
            return
        commands: list[Expr] = [
            {"delete": {"rule": _rule_ref(x.chain, x.handle)}}
            for x in state.base_rules()
            if x.jump_target() == chain
        ]
        if chain in state.chains:
            ref = {"family": FAMILY, "table": TABLE, "name": chain}
            commands += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
        if commands:
            _run_batch(commands)


def list_sandbox_rule_names(owner: str | None = None) -> set[str]:
    """Names of sandboxes that have chains or jump rules in the table; with ``owner``, only
    those whose rules carry that gateway id (a chain left empty has no owner and is listed
    only without ``owner``)."""
    with _locked():
        state = _read_state()
    if state is None:
        return set()
    if owner is not None:
        found = set()
        for rules in state.rules.values():
            for rule in rules:
                m = _COMMENT_RE.fullmatch(rule.comment or "")
                if m and m["owner"] == owner:
                    found.add(m["name"])
        return found
    names = {m["name"] for c in state.chains if (m := _CHAIN_RE.fullmatch(c))}
    for rule in state.base_rules():
        target = rule.jump_target()
        if target and (m := _CHAIN_RE.fullmatch(target)):
            names.add(m["name"])
    return names
