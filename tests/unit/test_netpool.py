"""Address planning for sandbox networks: pool checks, allocation, and parsing the host's view."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from airlock.host.hostnet import (
    networks_from_addr_json,
    networks_from_resolv_conf,
    networks_from_route_json,
)
from airlock.host.netpool import (
    PoolError,
    allocate_subnet,
    check_pool,
    gateway_and_sandbox_addresses,
)

N = IPv4Network

# What this kind of host looks like: eth0 in TEST-NET-1, a resolver outside it, docker0.
HOST_USED = [
    N("127.0.0.0/8"),
    N("192.0.2.2/32"),
    N("192.0.2.0/24"),
    N("172.17.0.0/16"),
    N("10.255.255.53/32"),
]


class TestCheckPool:
    def test_disjoint_pool_is_accepted(self) -> None:
        check_pool(N("10.213.0.0/16"), HOST_USED)

    def test_pool_containing_the_resolver_is_refused_and_named(self) -> None:
        with pytest.raises(PoolError, match=r"10\.255\.255\.53/32"):
            check_pool(N("10.255.0.0/16"), HOST_USED)

    def test_pool_inside_a_used_network_is_refused(self) -> None:
        with pytest.raises(PoolError, match=r"172\.17\.0\.0/16"):
            check_pool(N("172.17.8.0/24"), HOST_USED)

    def test_pool_containing_a_used_network_is_refused(self) -> None:
        with pytest.raises(PoolError, match=r"172\.17\.0\.0/16"):
            check_pool(N("172.16.0.0/12"), HOST_USED)

    def test_every_conflict_is_named(self) -> None:
        with pytest.raises(PoolError) as err:
            check_pool(N("10.0.0.0/8"), [N("10.1.0.0/16"), N("10.2.3.4/32"), N("11.0.0.0/8")])
        assert "10.1.0.0/16" in str(err.value)
        assert "10.2.3.4/32" in str(err.value)
        assert "11.0.0.0/8" not in str(err.value)

    def test_default_route_is_not_a_conflict(self) -> None:
        check_pool(N("10.213.0.0/16"), [N("0.0.0.0/0"), *HOST_USED])

    @pytest.mark.parametrize(
        "pool", ["8.8.8.0/24", "100.64.0.0/16", "127.1.0.0/16", "169.254.0.0/16", "224.0.0.0/8"]
    )
    def test_public_and_special_space_is_refused(self, pool: str) -> None:
        with pytest.raises(PoolError):
            check_pool(N(pool), [])

    def test_tiny_pool_is_refused(self) -> None:
        with pytest.raises(PoolError, match="too small"):
            check_pool(N("10.0.0.0/31"), [])

    def test_pool_error_is_a_value_error(self) -> None:
        assert issubclass(PoolError, ValueError)


class TestAllocateSubnet:
    def test_first_subnet_of_an_empty_pool(self) -> None:
        assert allocate_subnet(N("10.213.0.0/16")) == N("10.213.0.0/28")

    def test_default_size_is_28(self) -> None:
        assert allocate_subnet(N("10.213.0.0/16"), taken=set()).prefixlen == 28

    def test_skips_taken_subnets_of_any_size(self) -> None:
        taken = {N("10.213.0.0/28"), N("10.213.0.16/30"), N("10.213.0.32/27")}
        assert allocate_subnet(N("10.213.0.0/16"), 28, taken) == N("10.213.0.64/28")

    def test_a_taken_supernet_blocks_everything_inside_it(self) -> None:
        with pytest.raises(PoolError, match="pool exhausted"):
            allocate_subnet(N("10.213.0.0/24"), 28, {N("10.213.0.0/16")})

    def test_taken_outside_the_pool_is_irrelevant(self) -> None:
        assert allocate_subnet(N("10.213.0.0/24"), 28, {N("10.9.0.0/16")}) == N("10.213.0.0/28")

    def test_exhaustion(self) -> None:
        pool = N("10.213.0.0/27")
        taken = {N("10.213.0.0/28"), N("10.213.0.16/28")}
        with pytest.raises(PoolError, match=r"pool exhausted.*10\.213\.0\.0/27"):
            allocate_subnet(pool, 28, taken)

    def test_allocations_never_overlap(self) -> None:
        pool = N("10.213.0.0/24")
        taken: set[IPv4Network] = set()
        for size in [28, 30, 28, 26, 29, 28, 30]:
            got = allocate_subnet(pool, size, taken)
            assert got.subnet_of(pool)
            assert not any(got.overlaps(t) for t in taken)
            taken.add(got)

    @pytest.mark.parametrize("prefixlen", [8, 15, 31, 32])
    def test_prefix_outside_pool_or_too_small_is_refused(self, prefixlen: int) -> None:
        with pytest.raises(PoolError):
            allocate_subnet(N("10.213.0.0/16"), prefixlen, set())


class TestAddresses:
    def test_gateway_is_dot_one_and_sandbox_dot_two(self) -> None:
        assert gateway_and_sandbox_addresses(N("10.213.0.16/28")) == (
            IPv4Address("10.213.0.17"),
            IPv4Address("10.213.0.18"),
        )

    def test_smallest_usable_subnet(self) -> None:
        gw, sbx = gateway_and_sandbox_addresses(N("10.213.0.4/30"))
        assert (gw, sbx) == (IPv4Address("10.213.0.5"), IPv4Address("10.213.0.6"))

    def test_too_small(self) -> None:
        with pytest.raises(PoolError):
            gateway_and_sandbox_addresses(N("10.213.0.4/31"))


# Trimmed output of `ip -j -4 addr` and `ip -j -4 route show table all` on a test host.
ADDR_JSON: list[dict[str, Any]] = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24}]},
    {"ifname": "al-abc", "addr_info": [{"family": "inet", "local": "10.213.0.1", "prefixlen": 28}]},
    {
        "ifname": "wg0",
        "addr_info": [
            {"family": "inet", "local": "10.8.0.5", "address": "10.8.0.1", "prefixlen": 32}
        ],
    },
    {"ifname": "eth1", "addr_info": []},
]
ROUTE_JSON: list[dict[str, Any]] = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
    {"dst": "10.213.0.0/28", "dev": "al-abc", "protocol": "kernel"},
    {"dst": "198.18.0.0/15", "dev": "wg0", "table": "51820"},
    {"dst": "203.0.113.7", "dev": "eth0"},
    {"type": "blackhole", "dst": "10.99.0.0/16"},
    {"type": "local", "dst": "192.0.2.2", "dev": "eth0", "table": "local"},
    {"type": "broadcast", "dst": "192.0.2.255", "dev": "eth0", "table": "local"},
    {"type": "unreachable", "dst": "default", "table": "99"},
]


class TestHostParsers:
    def test_addresses_as_host_and_subnet(self) -> None:
        nets = networks_from_addr_json(ADDR_JSON, "al-")
        assert N("192.0.2.2/32") in nets
        assert N("192.0.2.0/24") in nets
        assert N("127.0.0.0/8") in nets
        assert N("10.8.0.1/32") in nets  # point-to-point peer

    def test_airlock_bridges_are_excluded_on_request(self) -> None:
        assert N("10.213.0.0/28") not in networks_from_addr_json(ADDR_JSON, "al-")
        assert N("10.213.0.0/28") in networks_from_addr_json(ADDR_JSON, None)

    def test_routes_from_all_tables_without_noise(self) -> None:
        nets = networks_from_route_json(ROUTE_JSON, "al-")
        assert set(nets) == {
            N("192.0.2.0/24"),
            N("198.18.0.0/15"),
            N("203.0.113.7/32"),
            N("10.99.0.0/16"),
        }

    def test_resolv_conf(self) -> None:
        text = (
            "# generated\nsearch example.internal\nnameserver 10.255.255.53\n"
            "nameserver fe80::1%eth0\nnameserver 192.0.2.53 # second\nnameserver bogus\n"
            "options ndots:0\n"
        )
        assert networks_from_resolv_conf(text) == [N("10.255.255.53/32"), N("192.0.2.53/32")]

    def test_parsed_host_refuses_pool_over_its_resolver(self) -> None:
        used = [
            *networks_from_addr_json(ADDR_JSON, "al-"),
            *networks_from_route_json(ROUTE_JSON, "al-"),
            *networks_from_resolv_conf("nameserver 10.255.255.53\n"),
        ]
        check_pool(N("10.213.0.0/16"), used)
        with pytest.raises(PoolError, match=r"10\.255\.255\.53"):
            check_pool(N("10.255.0.0/16"), used)
        with pytest.raises(PoolError, match=r"10\.99\.0\.0/16"):
            check_pool(N("10.96.0.0/12"), used)
