"""Address planning for sandbox networks. Pure: the host's networks are passed in.

Every sandbox gets a small subnet (a /28 by default) carved from one configured pool. The
pool must not overlap anything the host already uses (its addresses, its routes, its DNS
resolvers): a sandbox bridge on top of the host's resolver address, say, would silently break
the host's name resolution or hand the sandbox an address the host trusts.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

__all__ = [
    "DEFAULT_PREFIXLEN",
    "PoolError",
    "allocate_subnet",
    "check_pool",
    "gateway_and_sandbox_addresses",
]

DEFAULT_PREFIXLEN = 28
# A subnet needs a network address, .1 (gateway), .2 (sandbox) and a broadcast address.
MAX_PREFIXLEN = 30


class PoolError(ValueError):
    """The pool is unusable (overlap, wrong kind of addresses) or has no free subnet left."""


def check_pool(pool: IPv4Network, used: Iterable[IPv4Network]) -> None:
    """Refuse a pool that is not private unicast space or overlaps a network in ``used``.

    ``used`` holds the host's networks: interface addresses and their subnets, routes and
    resolver addresses (as /32s). A default route (0.0.0.0/0) says where *other* traffic goes,
    not that the space is taken, so it is ignored.
    """
    if pool.prefixlen > MAX_PREFIXLEN:
        raise PoolError(f"pool {pool} is too small: need at least a /{MAX_PREFIXLEN}")
    if pool.is_loopback or pool.is_link_local or pool.is_multicast or pool.is_reserved:
        raise PoolError(f"pool {pool} is loopback, link-local, multicast or reserved space")
    if not pool.is_private:
        # A public pool would shadow real internet addresses for the whole host.
        raise PoolError(f"pool {pool} is not private address space")
    conflicts = sorted({net for net in used if net.prefixlen > 0 and net.overlaps(pool)})
    if conflicts:
        named = ", ".join(str(net) for net in conflicts)
        raise PoolError(f"pool {pool} overlaps network(s) in use on this host: {named}")


def allocate_subnet(
    pool: IPv4Network,
    prefixlen: int = DEFAULT_PREFIXLEN,
    taken: Iterable[IPv4Network] = frozenset(),
) -> IPv4Network:
    """Return the first subnet of size ``prefixlen`` in ``pool`` that overlaps nothing taken.

    ``taken`` may hold subnets of any size (other sandboxes' networks, or anything else the
    caller wants kept out).
    """
    if not pool.prefixlen <= prefixlen <= MAX_PREFIXLEN:
        raise PoolError(
            f"cannot allocate a /{prefixlen} from {pool}: "
            f"prefix length must be between /{pool.prefixlen} and /{MAX_PREFIXLEN}"
        )
    blockers = sorted(net for net in taken if net.overlaps(pool))
    for candidate in pool.subnets(new_prefix=prefixlen):
        if not any(candidate.overlaps(net) for net in blockers):
            return candidate
    raise PoolError(f"pool exhausted: no free /{prefixlen} left in {pool}")


def gateway_and_sandbox_addresses(subnet: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """The bridge (gateway) takes .1 of the subnet, the sandbox container .2."""
    if subnet.prefixlen > MAX_PREFIXLEN:
        raise PoolError(f"subnet {subnet} is too small for a gateway and a sandbox")
    return subnet.network_address + 1, subnet.network_address + 2
