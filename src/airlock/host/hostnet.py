"""What IPv4 space the host already uses, read from iproute2 and /etc/resolv.conf.

A thin I/O shell around pure parsers; the result feeds :func:`airlock.host.netpool.check_pool`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any

__all__ = [
    "AIRLOCK_BRIDGE_PREFIX",
    "host_networks",
    "networks_from_addr_json",
    "networks_from_resolv_conf",
    "networks_from_route_json",
]

# airlock's own sandbox bridges live inside the pool; they are the pool's use, not a conflict.
AIRLOCK_BRIDGE_PREFIX = "al-"

# Route types that only mirror addresses already seen in `ip addr` (the kernel's "local"
# table) or are not destinations at all.
_IGNORED_ROUTE_TYPES = frozenset({"local", "broadcast", "anycast", "multicast"})


def host_networks(
    *,
    exclude_ifname_prefix: str | None = AIRLOCK_BRIDGE_PREFIX,
    resolv_conf: Path = Path("/etc/resolv.conf"),
) -> list[IPv4Network]:
    """The host's IPv4 addresses (as /32s and their subnets), routes and resolvers.

    Routes come from every routing table (``show table all`` includes ``main``), so policy
    routing tables (VPNs, cloud agents) count too. Default routes are left out.
    """
    addrs = _ip_json(["-4", "addr", "show"])
    routes = _ip_json(["-4", "route", "show", "table", "all"])
    try:
        resolv = resolv_conf.read_text()
    except FileNotFoundError:
        resolv = ""
    return _dedupe(
        [
            *networks_from_addr_json(addrs, exclude_ifname_prefix),
            *networks_from_route_json(routes, exclude_ifname_prefix),
            *networks_from_resolv_conf(resolv),
        ]
    )


def _ip_json(args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    data = json.loads(out or "[]")
    if not isinstance(data, list):
        raise ValueError(f"unexpected output from ip {' '.join(args)}")
    return [entry for entry in data if isinstance(entry, dict)]


def _excluded(ifname: object, prefix: str | None) -> bool:
    return prefix is not None and isinstance(ifname, str) and ifname.startswith(prefix)


def networks_from_addr_json(
    data: Iterable[dict[str, Any]], exclude_ifname_prefix: str | None = None
) -> list[IPv4Network]:
    """Each IPv4 address of each interface, as a /32 and as its on-link subnet."""
    nets: list[IPv4Network] = []
    for link in data:
        if _excluded(link.get("ifname"), exclude_ifname_prefix):
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != "inet" or "local" not in info:
                continue
            prefixlen = int(info.get("prefixlen", 32))
            nets.append(IPv4Network(f"{info['local']}/32"))
            nets.append(IPv4Network(f"{info['local']}/{prefixlen}", strict=False))
            if "address" in info and info["address"] != info["local"]:
                nets.append(IPv4Network(f"{info['address']}/32"))  # point-to-point peer
    return nets


def networks_from_route_json(
    data: Iterable[dict[str, Any]], exclude_ifname_prefix: str | None = None
) -> list[IPv4Network]:
    """Route destinations, minus default routes and the local/broadcast bookkeeping entries."""
    nets: list[IPv4Network] = []
    for route in data:
        dst = route.get("dst")
        if not isinstance(dst, str) or dst == "default":
            continue
        if route.get("type", "unicast") in _IGNORED_ROUTE_TYPES:
            continue
        if _excluded(route.get("dev"), exclude_ifname_prefix):
            continue
        try:
            net = ip_network(dst, strict=False)  # host routes come without "/32"
        except ValueError:
            continue
        if isinstance(net, IPv4Network) and net.prefixlen > 0:
            nets.append(net)
    return nets


def networks_from_resolv_conf(text: str) -> list[IPv4Network]:
    """IPv4 ``nameserver`` entries as /32s."""
    nets: list[IPv4Network] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                addr = ip_address(fields[1].split("%", 1)[0])
            except ValueError:
                continue
            if isinstance(addr, IPv4Address):
                nets.append(IPv4Network(addr))
    return nets


def _dedupe(nets: list[IPv4Network]) -> list[IPv4Network]:
    return list(dict.fromkeys(nets))
