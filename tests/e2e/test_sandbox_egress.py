"""Egress from real sandboxes: the allowlisting proxy and the gateway's DNS, end to end.

Everything here runs on the real Docker engine through airlock's own SandboxManager, with a real
gateway process. The "outside world" is decoys this module starts on addresses of its own:
HTTPS/HTTP servers on loopback addresses (127.0.77.x; the sandbox cannot reach loopback, only the
proxy can), an HTTPS server and an authoritative DNS server on an interface made for this module
(10.219.77.x), all with their own test CA. Names map to them through the config's
``[[egress.static]]`` table, and the gateway's own resolver for every other name is the decoy DNS
server, so nothing ever resolves or dials an outside address. Every decoy records each TCP
connection it accepts (before TLS), each SNI and each request.

Proved here (each refusal is its own test, with a positive control that differs only in the
one thing the refusal is about, and each asserts the refused decoy saw no connection at all):

* ``curl`` (HTTPS through CONNECT, and plain HTTP) and ``pip download`` from a PEP 503 index work
  through the proxy the sandbox's ``HTTPS_PROXY`` names, for allowlisted names (from the config's
  ``sandbox.allow_hosts`` and from the session's own list); the decoy sees the proxy (a loopback
  peer), never the sandbox; the audit log has the tunnel with its vetted address and bytes.
* Refused with 403 and ``X-Airlock-Refused: <rule>``, before anything is dialed: a name not on
  the allowlist (``not_allowlisted``; control: another session that lists it gets through), an IP
  literal in any spelling (``ip_literal``), port 22 (``port``), a name resolving to a private
  address, to loopback, to the metadata address (``private_address``; controls: a name for the
  same address marked ``allow_private`` gets through), DNS-over-HTTPS by host name under a
  wildcard (``doh``; control: an exact entry overrides) and on plain HTTP by path, ``Accept`` and
  ``Content-Type`` (``doh``; control: the same host's other paths work). A tunnel whose
  ClientHello names another host (or none) is cut with a TLS alert and never dialed (control: the
  same tunnel with the right SNI works).
* DNS: the sandbox's resolver (the gateway) answers the gateway's own name and REFUSES every other
  name, over UDP and TCP; Docker's embedded resolver (127.0.0.11, which forwards to the gateway)
  and any other address give no address; 300 unique tunnelling names sent every way a sandbox
  can (its resolver, 127.0.0.11, straight at the decoy's address, through the proxy) make the
  decoy authoritative server receive zero queries -- while it does receive the gateway's own
  lookups (positive control: a name the proxy must resolve reaches it) and answers the host.
* A burst of 1,000 concurrent bad connections (garbage, half requests, wrong and missing tokens,
  oversized heads, raw TLS) against the proxy port from one sandbox does not stop another
  sandbox's 8 MiB download, does not flood the audit log, and leaves the proxy serving the noisy
  sandbox's own valid requests.

Checked by hand that the refusal tests fail when their control is removed: with
``notallowed.decoy.test`` and ``mozilla.cloudflare-dns.com`` added to RESTRICTED_ALLOW, and
``private.decoy.test`` marked ``allow_private``, the three tests fail because the curl reaches the
decoy (200 with its marker).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from dnslib import QTYPE, DNSRecord

from airlock.host.images import SANDBOX_UID
from airlock.host.sandbox import Sandbox
from airlock.testing.tls import make_test_ca_and_server_cert
from tests.e2e import egress_decoys
from tests.e2e.conftest import E2E, Sandboxes, wait_until
from tests.e2e.egress_decoys import DecoyDNS, DecoyWeb, Route, build_wheel, server_tls
from tests.world import HOST, World

pytestmark = E2E

POOL = "10.216.64.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)

# Decoy addresses. Loopback ones only the proxy (a host process) can reach; the 10.219.77.x ones
# live on an interface this module creates (removed afterwards).
MAIN = "127.0.77.3"  # HTTPS :443, HTTP :80, TLS :22
FORBIDDEN = "127.0.77.4"  # HTTPS :443, behind names that must be refused by the allowlist
LOOPBACK = "127.0.77.5"  # HTTPS :443, behind a name that must be refused for its address
PRIVATE = "10.219.77.7"  # HTTPS :443, likewise
DNS_DECOY = "10.219.77.53"  # authoritative for TUNNEL_ZONE; the gateway's only resolver
METADATA = "169.254.169.254"  # nothing listens; an nft rule counts (and drops) any dial to it
TUNNEL_ZONE = "tunnel.decoy.test"
NFT_TABLE = "airlock_egress_test"

STATIC: list[tuple[str, str, bool]] = [  # name, address, allow_private
    ("allowed.decoy.test", MAIN, True),
    ("pypi.decoy.test", MAIN, True),
    ("allowed-http.decoy.test", MAIN, True),
    ("notallowed.decoy.test", FORBIDDEN, True),
    ("mozilla.cloudflare-dns.com", FORBIDDEN, True),
    ("private.decoy.test", PRIVATE, False),
    ("private-ok.decoy.test", PRIVATE, True),
    ("loop.decoy.test", LOOPBACK, False),
    ("loop-ok.decoy.test", LOOPBACK, True),
    ("meta.decoy.test", METADATA, False),
]
CONFIG_ALLOW = ["allowed.decoy.test"]  # [sandbox] allow_hosts: every session's default
RESTRICTED_ALLOW = [
    "pypi.decoy.test",
    "allowed-http.decoy.test",
    "*.cloudflare-dns.com",
    "private.decoy.test",
    "private-ok.decoy.test",
    "loop.decoy.test",
    "loop-ok.decoy.test",
    "meta.decoy.test",
]
# The control session: the same, plus exactly what the refusal tests refuse by name.
CONTROL_ALLOW = [
    *RESTRICTED_ALLOW,
    "notallowed.decoy.test",
    "mozilla.cloudflare-dns.com",
    f"*.{TUNNEL_ZONE}",
]


def _static_toml() -> str:
    return "".join(
        f'\n[[egress.static]]\nname = "{n}"\naddresses = ["{a}"]\n'
        f"allow_private = {'true' if p else 'false'}\n"
        for n, a, p in STATIC
    )


SANDBOX_EXTRA = (
    f"allow_hosts = {json.dumps(CONFIG_ALLOW)}\n"
    "\n[egress]\n"
    f'resolvers = ["{DNS_DECOY}"]\n'  # never the machine's resolver (an outside address)
    "resolver_timeout = 2\n" + _static_toml()
)

# The gateway refuses a session without grants (control.py: grants min_length=1), so an
# egress-only sandbox gets a read grant on a repository that does not exist upstream.
GRANTS = [f"{HOST}/acme/no-such-repo:read"]
CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
CURL = "curl -sS --max-time 20 --cacert /tools/ca.pem"
TOOLS = "python3 /tools/egress_decoys.py"
PACKAGE, VERSION = "airlock-egress-probe", "1.0"
BIG = 8 << 20  # bytes of the well-behaved download


# --- host-side fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def clean_ca_env() -> Iterator[None]:
    """The machine's CA variables must not decide anything run on the host (gateway included)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in CA_VARS:
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="module")
def host_link(clean_ca_env: None) -> Iterator[str]:
    """An interface of this module's own holding PRIVATE and DNS_DECOY (dummy, else a bridge)."""
    name = f"egd{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True)
    if made.returncode != 0:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        for address in (PRIVATE, DNS_DECOY):
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


@dataclass
class Decoys:
    main: DecoyWeb  # MAIN:443
    http: DecoyWeb  # MAIN:80
    ssh: DecoyWeb  # MAIN:22 (TLS, so a tunnel there would work)
    forbidden: DecoyWeb  # FORBIDDEN:443
    loopback: DecoyWeb  # LOOPBACK:443
    private: DecoyWeb  # PRIVATE:443
    dns: DecoyDNS  # DNS_DECOY:53
    tools: Path  # mounted read-only at /tools: ca.pem, egress_decoys.py
    wheel: Path
    big_sha256: str

    @property
    def web(self) -> list[DecoyWeb]:
        return [self.main, self.http, self.ssh, self.forbidden, self.loopback, self.private]

    def hits(self) -> dict[str, int]:
        return {f"{d.address}:{d.port}": d.hits for d in self.web}


@pytest.fixture(scope="module")
def decoys(host_link: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decoys]:
    root = tmp_path_factory.mktemp("egress-decoys")
    names = [n for n, _, _ in STATIC] + ["other.decoy.test"]
    tls = make_test_ca_and_server_cert(root / "tls", names, [MAIN])
    wheel = build_wheel(root, PACKAGE, VERSION, f"WHEEL-{uuid.uuid4().hex[:8]}")
    wheel_bytes = wheel.read_bytes()
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    big = os.urandom(BIG)
    html = "text/html"
    routes = {
        "/simple/": Route(html, f'<a href="/simple/{PACKAGE}/">{PACKAGE}</a>\n'.encode()),
        f"/simple/{PACKAGE}/": Route(
            html, f'<a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n'.encode()
        ),
        f"/files/{wheel.name}": Route("application/octet-stream", wheel_bytes),
        "/big": Route("application/octet-stream", big),
        "/dns-query": Route("application/dns-message", b"DOH-ANSWER"),
    }
    made: list[DecoyWeb] = []
    dns: DecoyDNS | None = None

    def web(address: str, port: int, use_tls: bool = True) -> DecoyWeb:
        ctx = server_tls(tls.server_cert, tls.server_key) if use_tls else None
        d = DecoyWeb(address, port, f"DECOY-{address}-{port}-{uuid.uuid4().hex[:6]}", ctx, routes)
        made.append(d)
        return d

    tools = root / "tools"
    tools.mkdir()
    shutil.copy(tls.ca_cert, tools / "ca.pem")
    shutil.copy(egress_decoys.__file__, tools / "egress_decoys.py")
    for p in (tools, *tools.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    try:
        ds = Decoys(
            main=web(MAIN, 443),
            http=web(MAIN, 80, use_tls=False),
            ssh=web(MAIN, 22),
            forbidden=web(FORBIDDEN, 443),
            loopback=web(LOOPBACK, 443),
            private=web(PRIVATE, 443),
            dns=(dns := DecoyDNS(DNS_DECOY, TUNNEL_ZONE, answer=PRIVATE)),
            tools=tools,
            wheel=wheel,
            big_sha256=hashlib.sha256(big).hexdigest(),
        )
        # Positive control: every decoy answers the host, each on the address the tests use.
        for d in ds.web:
            assert host_get(d, "/hello", tls.ca_cert) is not None, f"{d.address}:{d.port} is down"
            d.accepted.clear()
            d.snis.clear()
            d.requests.clear()
        yield ds
    finally:
        for d in made:
            d.close()
        if dns is not None:
            dns.close()


def host_get(decoy: DecoyWeb, path: str, ca: Path) -> str | None:
    """GET ``path`` from the host, straight to the decoy (TLS verified against the decoy CA)."""
    name = "allowed.decoy.test"
    conn: http.client.HTTPConnection
    if decoy.tls is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # decoys on several addresses share one certificate
        conn = http.client.HTTPSConnection(decoy.address, decoy.port, context=ctx, timeout=5)
    else:
        conn = http.client.HTTPConnection(decoy.address, decoy.port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": name})
        body = conn.getresponse().read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()
    return body if decoy.marker in body else None


@dataclass
class NftCounters:
    """Counters in an nft table of this module's own, on the host's output hook."""

    def read(self) -> dict[str, int]:
        out = subprocess.run(
            ["nft", "-j", "list", "table", "inet", NFT_TABLE],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        counts: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            for e in rule["expr"]:
                if "counter" in e:
                    counts[rule.get("comment", "?")] = int(e["counter"]["packets"])
        return counts


@pytest.fixture(scope="module")
def nft_counters(clean_ca_env: None) -> Iterator[NftCounters]:
    """``metadata``: any TCP/443 packet the host sends to METADATA, counted and dropped (it must
    stay 0; the drop guarantees no test ever reaches a real metadata service). ``private``: the
    same for the PRIVATE decoy (counted only) -- the positive control that these counters do see
    the gateway's dials."""
    rules = f"""
table inet {NFT_TABLE} {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {METADATA} tcp dport 443 counter drop comment "metadata"
        ip daddr {PRIVATE} tcp dport 443 counter comment "private"
    }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        yield NftCounters()
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)


# --- sandboxes -------------------------------------------------------------------------------


def _long_running(sandboxes: Sandboxes, decoys: Decoys, allow: list[str]) -> Sandbox:
    return sandboxes.start(
        "sleep 1200", GRANTS, allow_hosts=allow, volumes=[f"{decoys.tools}:/tools:ro"]
    )


@pytest.fixture(scope="module")
def restricted(
    sandboxes: Sandboxes, decoys: Decoys, nft_counters: NftCounters
) -> Iterator[Sandbox]:
    """The sandbox under test: config default + RESTRICTED_ALLOW."""
    sb = _long_running(sandboxes, decoys, RESTRICTED_ALLOW)
    yield sb
    sandboxes.teardown(sb)


@pytest.fixture(scope="module")
def control(sandboxes: Sandboxes, decoys: Decoys, nft_counters: NftCounters) -> Iterator[Sandbox]:
    """The positive-control sandbox: the same, plus the names the refusal tests refuse."""
    sb = _long_running(sandboxes, decoys, CONTROL_ALLOW)
    yield sb
    sandboxes.teardown(sb)


# --- probes ----------------------------------------------------------------------------------


@dataclass
class Curl:
    exit: int
    connect: int  # the proxy's answer to CONNECT (%{http_connect}); 0 when none
    http: int  # the final HTTP status (%{http_code}); 0 when none
    refused: str | None  # X-Airlock-Refused from either
    body: str
    output: str


def curl(sandboxes: Sandboxes, sb: Sandbox, url: str, *args: str) -> Curl:
    """curl ``url`` inside the sandbox with its own proxy settings (HTTPS_PROXY/HTTP_PROXY)."""
    extra = " ".join(shlex.quote(a) for a in args)
    script = (
        f"rm -f /tmp/h /tmp/b; {CURL} -o /tmp/b -D /tmp/h "
        f"-w 'CODES %{{http_connect}} %{{http_code}}\\n' {extra} {shlex.quote(url)} 2>&1; "
        'echo "EXIT $?"; echo ===HEAD; cat /tmp/h; echo ===BODY; head -c 4000 /tmp/b'
    )
    _, out = sandboxes.exec(sb, script)
    codes = re.search(r"CODES (\d+) (\d+)", out)
    exit_code = re.search(r"EXIT (\d+)", out)
    assert codes and exit_code, out
    head, _, body = out.partition("===HEAD")[2].partition("===BODY")
    refused = re.search(r"(?im)^x-airlock-refused:\s*(\S+)", head)
    return Curl(
        exit=int(exit_code.group(1)),
        connect=int(codes.group(1)),
        http=int(codes.group(2)),
        refused=refused.group(1) if refused else None,
        body=body,
        output=out,
    )


def probe(sandboxes: Sandboxes, sb: Sandbox, name: str, args: dict[str, Any]) -> Any:
    """Run one of egress_decoys' sandbox-side probes inside ``sb``; its JSON result."""
    code, out = sandboxes.exec(sb, f"{TOOLS} {name} {shlex.quote(json.dumps(args))}")
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def egress_log(world: World, sb: Sandbox) -> list[dict[str, Any]]:
    return [e for e in world.audit_for(str(sb.session_id)) if e.get("event") == "egress"]


def logged(world: World, sb: Sandbox, **match: Any) -> dict[str, Any]:
    """The egress audit record of ``sb`` matching ``match`` (waits for it: written at close)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [
            e for e in egress_log(world, sb) if all(e.get(k) == v for k, v in match.items())
        ]
        return bool(found)

    assert wait_until(look, 5), (match, egress_log(world, sb)[-5:])
    return found[-1]


def assert_connect_refused(r: Curl, rule: str) -> None:
    assert r.exit != 0, r.output
    assert (r.connect, r.http, r.refused) == (403, 0, rule), r.output


def assert_http_refused(r: Curl, rule: str) -> None:
    assert (r.connect, r.http, r.refused) == (0, 403, rule), r.output
    assert "airlock egress: forbidden" in r.body, r.output


def assert_ok(r: Curl, decoy: DecoyWeb) -> None:
    assert r.exit == 0 and r.http == 200 and decoy.marker in r.body, r.output


@contextlib.contextmanager
def no_new_hits(decoys: Decoys) -> Iterator[None]:
    """Asserts that no decoy accepted a single TCP connection inside the block."""
    before = decoys.hits()
    yield
    time.sleep(0.2)  # a (wrongly) dialed connection would have been accepted by now
    assert decoys.hits() == before


# --- 1. what is allowed works ----------------------------------------------------------------


def test_curl_reaches_allowlisted_decoys_through_the_proxy(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    _, env = sandboxes.exec(restricted, "echo $HTTPS_PROXY")
    assert re.fullmatch(rf"http://airlock:\S+@{restricted.gateway_ip}:3128", env.strip()), env

    # HTTPS through CONNECT; the name is allowlisted by the config's default only.
    n = len(decoys.main.accepted)
    r = curl(sandboxes, restricted, "https://allowed.decoy.test/hello")
    assert_ok(r, decoys.main)
    assert r.connect == 200 and "host=allowed.decoy.test" in r.body
    assert decoys.main.snis[n:] == ["allowed.decoy.test"]
    # The decoy saw the proxy (a host process, on loopback), never the sandbox.
    assert len(decoys.main.accepted) == n + 1
    assert ipaddress.ip_address(decoys.main.accepted[-1]).is_loopback
    rec = logged(sbx_world, restricted, host="allowed.decoy.test", decision="allowed")
    assert rec["address"] == MAIN and rec["port"] == 443 and rec["method"] == "CONNECT"
    assert rec["container"] == restricted.container_id and rec["source"] == str(
        restricted.sandbox_ip
    )
    assert rec["rule"] == "exact" and rec["bytes_down"] > 0 and rec["bytes_up"] > 0

    # Plain HTTP in absolute form; the name is on the session's own list.
    r = curl(sandboxes, restricted, "http://allowed-http.decoy.test/hello")
    assert_ok(r, decoys.http)
    assert decoys.http.requests[-1] == "allowed-http.decoy.test /hello"
    logged(sbx_world, restricted, host="allowed-http.decoy.test", method="GET", status=200)

    # The proxy is the only way: without it the name does not even resolve.
    with no_new_hits(decoys):
        r = curl(sandboxes, restricted, "https://allowed.decoy.test/hello", "--noproxy", "*")
    assert r.exit == 6 and r.http == 0, r.output  # "Could not resolve host"


def test_pip_download_from_an_allowlisted_decoy_index(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    script = (
        # requests (pip's HTTP) prefers REQUESTS_CA_BUNDLE, which a sandbox has (the API's
        # CA bundle), even to --cert: a private index's CA goes there (README).
        "rm -rf /tmp/dl; REQUESTS_CA_BUNDLE=/tools/ca.pem "
        "pip download --no-deps --no-cache-dir --disable-pip-version-check "
        "--index-url https://pypi.decoy.test/simple/ --cert /tools/ca.pem -d /tmp/dl "
        f"{PACKAGE}=={VERSION} 2>&1; echo EXIT $?; cd /tmp/dl && sha256sum *"
    )
    _, out = sandboxes.exec(restricted, script)
    assert "EXIT 0" in out, out
    assert f"{decoys.wheel.name}" in out
    digest = hashlib.sha256(decoys.wheel.read_bytes()).hexdigest()
    assert f"{digest}  {decoys.wheel.name}" in out, out
    paths = [r.split(" ", 1)[1] for r in decoys.main.requests if r.startswith("pypi.decoy.test")]
    assert f"/simple/{PACKAGE}/" in paths and f"/files/{decoys.wheel.name}" in paths, paths
    logged(sbx_world, restricted, host="pypi.decoy.test", decision="allowed", address=MAIN)


# --- 2. refusals, each with its control --------------------------------------------------------


def test_refuses_a_name_not_on_the_allowlist(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    control: Sandbox,
    decoys: Decoys,
) -> None:
    with no_new_hits(decoys):
        r = curl(sandboxes, restricted, "https://notallowed.decoy.test/hello")
        assert_connect_refused(r, "not_allowlisted")
        r = curl(sandboxes, restricted, "http://notallowed.decoy.test/hello")
        assert_http_refused(r, "not_allowlisted")
    rec = logged(sbx_world, restricted, host="notallowed.decoy.test", method="CONNECT")
    assert (rec["decision"], rec["rule"], rec["address"]) == ("refused", "not_allowlisted", None)
    # Control: a session that lists the name reaches the very same decoy.
    n = len(decoys.forbidden.snis)
    assert_ok(curl(sandboxes, control, "https://notallowed.decoy.test/hello"), decoys.forbidden)
    assert decoys.forbidden.snis[n:] == ["notallowed.decoy.test"]


def test_refuses_ip_literals(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    with no_new_hits(decoys):
        assert_connect_refused(curl(sandboxes, restricted, f"https://{MAIN}/hello"), "ip_literal")
        assert_http_refused(curl(sandboxes, restricted, f"http://{MAIN}/hello"), "ip_literal")
        spellings = [
            f"{MAIN}:443",
            "2130726147:443",  # MAIN as one decimal number
            "0x7f.0.77.3:443",
            "127.0.19715:443",  # 127.0.(77*256+3)
            f"[::ffff:{MAIN}]:443",
            "[::1]:443",
        ]
        results = probe(
            sandboxes,
            restricted,
            "raw",
            {"requests": [{"line": f"CONNECT {t} HTTP/1.1", "host": t} for t in spellings]},
        )
    assert [(x["status"], x["refused"]) for x in results] == [(403, "ip_literal")] * len(
        spellings
    ), results
    logged(sbx_world, restricted, rule="ip_literal", decision="refused", status=403)
    # Control: the same decoy, by an allowlisted name, answers (the decoy's certificate even
    # carries MAIN as an IP SAN, so only the proxy stands in the way above).
    assert_ok(curl(sandboxes, restricted, "https://allowed.decoy.test/hello"), decoys.main)


def test_refuses_port_22(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    with no_new_hits(decoys):
        r = curl(sandboxes, restricted, "https://allowed.decoy.test:22/hello")
        assert_connect_refused(r, "port")
        r = curl(sandboxes, restricted, "http://allowed-http.decoy.test:22/hello")
        assert_http_refused(r, "port")
        results = probe(
            sandboxes,
            restricted,
            "raw",
            {"requests": [{"line": "CONNECT allowed.decoy.test:22 HTTP/1.1", "host": "x"}]},
        )
        assert results == [{"status": 403, "refused": "port"}]
    assert decoys.ssh.hits == 0  # a TLS decoy listens on MAIN:22 all along
    rec = logged(sbx_world, restricted, host="allowed.decoy.test", port=22)
    assert (rec["rule"], rec["status"], rec["address"]) == ("port", 403, None)
    # Control: same name, port 443.
    assert_ok(curl(sandboxes, restricted, "https://allowed.decoy.test/hello"), decoys.main)


def _refused_for_address(
    sandboxes: Sandboxes,
    world: World,
    sb: Sandbox,
    decoys: Decoys,
    name: str,
    address: str,
    reason: str,
) -> None:
    with no_new_hits(decoys):
        assert_connect_refused(curl(sandboxes, sb, f"https://{name}/hello"), "private_address")
        assert_http_refused(curl(sandboxes, sb, f"http://{name}/hello"), "private_address")
    rec = logged(world, sb, host=name, method="CONNECT", rule="private_address")
    assert rec["decision"] == "refused" and rec["status"] == 403
    assert rec["address"] == address and rec["detail"] == f"{reason} {address}", rec


def test_refuses_a_name_that_resolves_to_a_private_address(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    decoys: Decoys,
    nft_counters: NftCounters,
) -> None:
    before = nft_counters.read()["private"]
    _refused_for_address(
        sandboxes, sbx_world, restricted, decoys, "private.decoy.test", PRIVATE, "private"
    )
    assert decoys.private.hits == 0 and nft_counters.read()["private"] == before
    # Control: a name for the same address marked allow_private (decoys only) gets through,
    # from the same session -- so the address class alone made the difference.
    assert_ok(curl(sandboxes, restricted, "https://private-ok.decoy.test/hello"), decoys.private)
    assert decoys.private.snis[-1:] == ["private-ok.decoy.test"]
    assert nft_counters.read()["private"] > before  # and the counters see the gateway's dials


def test_refuses_a_name_that_resolves_to_loopback(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    _refused_for_address(
        sandboxes, sbx_world, restricted, decoys, "loop.decoy.test", LOOPBACK, "loopback"
    )
    assert decoys.loopback.hits == 0
    assert_ok(curl(sandboxes, restricted, "https://loop-ok.decoy.test/hello"), decoys.loopback)
    assert decoys.loopback.snis[-1:] == ["loop-ok.decoy.test"]


def test_refuses_a_name_that_resolves_to_the_metadata_address(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    decoys: Decoys,
    nft_counters: NftCounters,
) -> None:
    # Nothing may listen on METADATA (the host could be a cloud VM): the nft counter on the
    # host's output hook stands in for the decoy, and its drop keeps a faulty proxy in here.
    assert nft_counters.read()["metadata"] == 0
    _refused_for_address(
        sandboxes, sbx_world, restricted, decoys, "meta.decoy.test", METADATA, "link_local"
    )
    assert nft_counters.read()["metadata"] == 0
    # (The counters' positive control is in the private-address test.)


def test_refuses_a_tunnel_whose_sni_names_another_host(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    attempts = [
        {"connect": "allowed.decoy.test", "sni": "other.decoy.test"},  # domain fronting
        {"connect": "allowed.decoy.test", "sni": "notallowed.decoy.test"},
        {"connect": "allowed.decoy.test", "sni": None},  # no SNI at all
    ]
    snis = len(decoys.main.snis)
    with no_new_hits(decoys):
        results = probe(
            sandboxes, restricted, "sni", {"cafile": "/tools/ca.pem", "attempts": attempts}
        )
    for r in results:
        # The CONNECT itself is answered (the name is fine); the ClientHello is what is refused,
        # with a TLS access_denied alert, before anything is dialed.
        assert r["status"] == 200 and r["tls"].startswith("error"), results
        assert "ACCESS_DENIED" in r["tls"], results
    assert len(decoys.main.snis) == snis
    rules = {
        e["rule"] for e in egress_log(sbx_world, restricted) if e["host"] == "allowed.decoy.test"
    }
    assert {"sni_mismatch", "no_sni"} <= rules, rules
    rec = logged(sbx_world, restricted, rule="sni_mismatch")
    assert rec["decision"] == "refused" and rec["bytes_up"] == 0 and rec["bytes_down"] == 0
    # Control: the same tunnel with the right SNI. The decoy's certificate is valid for
    # other.decoy.test too, so without the proxy's check the fronting attempt would have worked.
    right = {"connect": "allowed.decoy.test", "sni": "allowed.decoy.test"}
    ok = probe(sandboxes, restricted, "sni", {"cafile": "/tools/ca.pem", "attempts": [right]})
    assert ok[0]["tls"] == "ok" and decoys.main.marker in ok[0]["body"], ok
    assert decoys.main.snis[snis:] == ["allowed.decoy.test"]


DOH_QUERY = "AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE"  # example.com A, base64url


def test_refuses_dns_over_https_to_a_known_doh_host(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    control: Sandbox,
    decoys: Decoys,
) -> None:
    # The session allows *.cloudflare-dns.com; the shipped DoH list still refuses the host.
    url = f"https://mozilla.cloudflare-dns.com/dns-query?dns={DOH_QUERY}"
    with no_new_hits(decoys):
        assert_connect_refused(curl(sandboxes, restricted, url), "doh")
    rec = logged(sbx_world, restricted, host="mozilla.cloudflare-dns.com", rule="doh")
    assert rec["decision"] == "refused" and rec["address"] is None
    # Control: an exact entry (the control session's) overrides, with a warning in the log.
    r = curl(sandboxes, control, url)
    assert r.exit == 0 and r.http == 200 and "DOH-ANSWER" in r.body, r.output
    rec = logged(sbx_world, control, host="mozilla.cloudflare-dns.com", decision="allowed")
    assert rec["rule"] == "doh_override" and rec["warning"] == "doh_host_allowed_by_exact_entry"


def test_refuses_dns_over_https_on_plain_http(
    sandboxes: Sandboxes, sbx_world: World, restricted: Sandbox, decoys: Decoys
) -> None:
    base = "http://allowed-http.decoy.test"
    with no_new_hits(decoys):
        assert_http_refused(curl(sandboxes, restricted, f"{base}/dns-query?dns={DOH_QUERY}"), "doh")
        assert_http_refused(
            curl(
                sandboxes,
                restricted,
                f"{base}/resolve?name=example.com&type=A",
                "-H",
                "Accept: application/dns-json",
            ),
            "doh",
        )
        assert_http_refused(
            curl(
                sandboxes,
                restricted,
                f"{base}/upload",
                "-H",
                "Content-Type: application/dns-message",
                "--data-binary",
                "q-as-dns-wire-format",
            ),
            "doh",
        )
        assert_http_refused(curl(sandboxes, restricted, f"{base}/x?dns=AAAB"), "doh")
    rules = [e for e in egress_log(sbx_world, restricted) if e["host"] == "allowed-http.decoy.test"]
    assert sum(e["rule"] == "doh" for e in rules) >= 4
    # Control: the same host and proxy, an ordinary path.
    assert_ok(curl(sandboxes, restricted, f"{base}/hello"), decoys.http)


# --- 3. DNS ----------------------------------------------------------------------------------

DIG = r"""
q() { out=$(dig +time=2 +tries=1 "$@" 2>&1)
      st=$(echo "$out" | sed -n 's/.*status: \([A-Z]*\).*/\1/p')
      an=$(echo "$out" | sed -n 's/.*ANSWER: \([0-9]*\).*/\1/p')
      echo "Q $* => ${st:-none} ${an:-none}"; }
"""


def dig_results(out: str) -> dict[str, tuple[str, str]]:
    """'Q ARGS => STATUS ANSWERS' lines -> {ARGS: (STATUS, ANSWERS)}; 'none' when no reply."""
    found = re.findall(r"^Q (.+?) => (\S+) (\S+)$", out, re.M)
    return {args: (st, an) for args, st, an in found}


def test_dns_answers_the_gateway_name_and_refuses_outside_names(
    sandboxes: Sandboxes, restricted: Sandbox, decoys: Decoys
) -> None:
    names = [
        "example.org",
        "github.com",
        "pkgs.example.com",
        "allowed.decoy.test",
        f"a.{TUNNEL_ZONE}",
    ]
    lines = [DIG, "q airlock.internal A", "echo GW $(dig +short +time=2 +tries=1 airlock.internal)"]
    for n in names:
        lines += [f"q {n} A", f"q {n} AAAA", f"q {n} TXT", f"q +tcp {n} A"]
    lines += [
        "getent hosts example.org; echo GETENT $?",
        "python3 -c \"import socket; socket.getaddrinfo('example.org', 443)\" 2>/dev/null;"
        " echo GAI $?",
    ]
    _, out = sandboxes.exec(restricted, "\n".join(lines))
    res = dig_results(out)
    # Control: the gateway's own name resolves, to the gateway's address on this network.
    assert res["airlock.internal A"] == ("NOERROR", "1"), out
    assert f"GW {restricted.gateway_ip}" in out
    for n in names:
        for args in (f"{n} A", f"{n} AAAA", f"{n} TXT", f"+tcp {n} A"):
            assert res[args] == ("REFUSED", "0"), (args, out)
    assert "GETENT 0" not in out and "GAI 0" not in out, out
    assert not decoys.dns.names() & {f"a.{TUNNEL_ZONE}"}


def test_dns_to_other_resolvers_gets_nothing(
    sandboxes: Sandboxes, restricted: Sandbox, decoys: Decoys
) -> None:
    # Positive control: the decoy authoritative server answers the host on that very address.
    control_name = f"host-control-{secrets.token_hex(4)}.{TUNNEL_ZONE}"
    reply = DNSRecord.parse(DNSRecord.question(control_name, "A").send(DNS_DECOY, 53, timeout=3))
    assert [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == [PRIVATE]
    assert control_name in decoys.dns.names()
    seen = list(decoys.dns.queries)
    name = f"direct-{secrets.token_hex(4)}.{TUNNEL_ZONE}"
    script = "\n".join(
        [
            DIG,
            # Docker's embedded resolver (it forwards to the container's DNS server, which
            # airlock sets to the gateway: checked by hand with nft counters on the bridge and
            # on the host's own resolver address -- 1 and 0 packets).
            "q @127.0.0.11 example.org A &",
            f"q @127.0.0.11 {name} A &",
            # The decoy's own address (a host address the sandbox has a route to, via the
            # bridge), over UDP and TCP, and the gateway on a port other than its DNS port.
            f"q @{DNS_DECOY} {name} A &",
            f"q +tcp @{DNS_DECOY} {name} A &",
            f"q @{restricted.gateway_ip} -p 5353 {name} A &",
            "wait",
        ]
    )
    _, out = sandboxes.exec(restricted, script)
    res = dig_results(out)
    assert len(res) == 5, out
    for args, (status, answers) in res.items():
        assert answers in ("none", "0"), (args, out)  # no address, whoever answered
        if DNS_DECOY in args or "5353" in args:
            assert status == "none", (args, out)  # no reply at all
    assert decoys.dns.queries == seen  # not one query arrived, by any of these paths


def test_dns_tunnelling_never_reaches_the_authoritative_server(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    control: Sandbox,
    decoys: Decoys,
) -> None:
    # Positive control: the decoy IS the gateway's resolver. A name the proxy must resolve
    # (allowlisted for the control session, not in the static map) reaches it; the decoy's
    # private answer is then refused, so nothing is dialed.
    probe_name = f"probe-{secrets.token_hex(4)}.{TUNNEL_ZONE}"
    with no_new_hits(decoys):
        r = curl(sandboxes, control, f"https://{probe_name}/")
    assert_connect_refused(r, "private_address")
    assert probe_name in decoys.dns.names()
    seen_before = set(decoys.dns.queries)

    # The attack: data encoded in 300 unique names under the decoy's zone, sent every way.
    names = [f"x{i}-{secrets.token_hex(16)}.{TUNNEL_ZONE}" for i in range(300)]
    gw = str(restricted.gateway_ip)
    result = probe(
        sandboxes,
        restricted,
        "dns",
        {"names": names, "targets": [[gw, 53], ["127.0.0.11", 53], [DNS_DECOY, 53]], "wait": 3},
    )
    via_proxy = [
        curl(sandboxes, restricted, f"https://{n}/") for n in names[:5]
    ]  # not allowlisted here: never resolved
    _, out = sandboxes.exec(restricted, " ; ".join(f"getent hosts {n}" for n in names[5:10]))
    assert out.strip() == "", out

    sandbox_resolver = result[f"{gw}:53"]
    assert sandbox_resolver["sent"] == 300 and sandbox_resolver["replies"] > 0, result
    assert set(sandbox_resolver["rcodes"]) == {"5"} and sandbox_resolver["answers"] == 0, result
    assert result["127.0.0.11:53"]["answers"] == 0, result
    assert result[f"{DNS_DECOY}:53"]["replies"] == 0, result
    for r in via_proxy:
        assert_connect_refused(r, "not_allowlisted")
    # Zero queries reached the authoritative server, by any path.
    assert set(decoys.dns.queries) == seen_before
    assert not decoys.dns.names() & set(names)


# --- 4. a burst of bad connections ---------------------------------------------------------


def test_proxy_survives_a_burst_of_bad_connections_while_a_download_completes(
    sandboxes: Sandboxes,
    sbx_world: World,
    restricted: Sandbox,
    decoys: Decoys,
    docker_client: docker.DockerClient,
) -> None:
    noisy = _long_running(sandboxes, decoys, [])
    try:
        audit_lines = len(sbx_world.audit())
        opened, done = "/tmp/burst-open", "/tmp/burst-done"
        args = {"n": 1000, "signal": opened, "done": done}

        def burst() -> tuple[int, str]:
            api = docker.APIClient(timeout=120)
            try:
                cmd = ["/bin/sh", "-c", f"{TOOLS} burst {shlex.quote(json.dumps(args))}"]
                exec_id = api.exec_create(noisy.container_id, cmd, user=str(SANDBOX_UID))
                out: bytes = api.exec_start(exec_id)
                return int(api.exec_inspect(exec_id)["ExitCode"]), out.decode(errors="replace")
            finally:
                api.close()

        def in_noisy(test: str) -> Callable[[], bool]:
            return lambda: sandboxes.exec(noisy, f"test -e {test}")[0] == 0

        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(burst)
            assert wait_until(in_noisy(opened), 60), "the burst never opened"
            # While the 1,000 connections are open and misbehaving: the well-behaved sandbox.
            t0 = time.monotonic()
            _, out = sandboxes.exec(
                restricted,
                f"{CURL} -o /tmp/big -w 'GOT %{{http_code}} %{{size_download}}\\n' "
                "https://allowed.decoy.test/big; sha256sum /tmp/big; rm -f /tmp/big",
            )
            took = time.monotonic() - t0
            still_bursting = not in_noisy(done)()
            code, burst_out = running.result(120)
        assert f"GOT 200 {BIG}" in out and decoys.big_sha256 in out, out
        assert still_bursting, f"the download ({took:.1f}s) did not overlap the burst"
        assert code == 0, burst_out
        stats = json.loads(burst_out.strip().splitlines()[-1])
        assert stats["connected"] == 1000 and stats["connect_failed"] == 0, stats
        o = stats["outcomes"]
        assert o["wrong_token"] == {"status:407": len_kind("wrong_token")}, o
        assert o["no_token"] == {"status:407": len_kind("no_token")}, o
        assert o["garbage"] == {"status:400": len_kind("garbage")}, o
        # Unparseable or oversized heads: an error status, or cut off (the proxy may close
        # before it has read everything, which the kernel turns into a reset).
        for kind in ("huge_head", "tls_bytes"):
            assert all(
                re.fullmatch(r"status:4\d\d|closed_by_proxy:\d+s|reset:\w+", k) for k in o[kind]
            ), o
        # Half requests are cut by the proxy's head timeout, without an answer.
        assert all(k.startswith("closed_by_proxy") for k in o["half"]), o
        # The gateway lives, the noisy sandbox's own valid request still works, and the
        # unauthenticated burst cost the audit log no line per connection.
        assert sbx_world.proc is not None and sbx_world.proc.poll() is None
        assert_ok(curl(sandboxes, noisy, "https://allowed.decoy.test/hello"), decoys.main)
        new = sbx_world.audit()[audit_lines:]
        assert len(new) < 25, [e.get("event") for e in new]
    finally:
        sandboxes.teardown(noisy)


def len_kind(kind: str) -> int:
    kinds = egress_decoys.BURST_KINDS
    return sum(1 for i in range(1000) if kinds[i % len(kinds)] == kind)
