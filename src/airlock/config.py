"""The gateway's configuration file (TOML), validated with pydantic.

An unknown key or a bad value stops start-up with a message naming the key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from airlock.core.durations import parse_duration
from airlock.core.hostnames import InvalidHostname, normalize_hostname
from airlock.core.refrules import InvalidRefRule, RefRule, parse_rules


class ConfigError(Exception):
    """A configuration problem, worded for the person who edits the file."""


def _duration(v: Any) -> Any:
    if isinstance(v, str):
        return parse_duration(v)
    return v


Duration = Annotated[int, BeforeValidator(_duration), Field(gt=0)]


def _hostname(v: str) -> str:
    try:
        return normalize_hostname(v)
    except InvalidHostname as exc:
        raise ValueError(str(exc)) from None


# A DNS host name, normalised (IDNA, case, trailing dot); IP literals are refused.
HostName = Annotated[str, AfterValidator(_hostname)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{v!r} must be ADDRESS:PORT, e.g. 127.0.0.1:8443")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"{v!r}: {host!r} is not an IP address") from None
    return v


class GatewayContainerConfig(_Strict):
    """`[gateway.container]`: the gateway as a hardened container (host/gateway_container.py).

    It reaches the upstreams over a network of its own and joins each sandbox's network at
    a fixed address (the subnet's third address) instead of listening on the host's bridges.
    """

    name: str = Field(default="airlock-gateway", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    image: str | None = None  # default: the image `airlock image --gateway` builds
    # Its own network to the upstreams and allowlisted hosts (a NAT'd bridge), and the
    # subnet of it (unset: Docker picks one; it must not overlap the host's networks).
    network: str = Field(default="airlock-gateway", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    subnet: str | None = None
    uid: int = Field(default=10001, gt=0)  # never root inside the gateway's container
    # Where the host-side git listener (for `session create --out` bundles) is published.
    publish_address: str = "127.0.0.1"
    # TCP ports of the host's address on that network the gateway may connect to (a
    # host-local upstream or mirror); every other host address and port is closed to it
    # (host/firewall.py, "the gateway container's own network").
    host_ports: list[int] = Field(default_factory=list)

    @field_validator("host_ports")
    @classmethod
    def _host_ports(cls, v: list[int]) -> list[int]:
        for port in v:
            if not 0 < port < 65536:
                raise ValueError(f"{port} is not a TCP port")
        return v

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.IPv4Network(v))
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv4 network ({exc})") from None

    @field_validator("publish_address")
    @classmethod
    def _publish(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        return v


class GatewayConfig(_Strict):
    # "host": a process on the host, listening on each sandbox bridge's host address.
    # "container": a container that joins each sandbox network ([gateway.container]).
    mode: Literal["host", "container"] = "host"
    container: GatewayContainerConfig = Field(default_factory=GatewayContainerConfig)
    state_dir: Path = Path("/var/lib/airlock")
    control_socket: Path = Path("/run/airlock/control.sock")
    # What `airlock install` and the image builders recorded (unit hashes, image ids), checked
    # by `airlock doctor`; root's, and never where the gateway can write (host/integrity.py).
    integrity_manifest: Path = Path("/var/lib/airlock-host/integrity.json")
    git_listen: str = "127.0.0.1:8443"
    public_name: HostName = "airlock.internal"
    control_uids: list[int] = Field(default_factory=lambda: [0])
    audit_log: Path | None = None  # JSON lines; stdout when unset
    dns_port: int = Field(default=53, gt=0, lt=65536)  # on each sandbox network's gateway address
    metrics_listen: str | None = None  # e.g. 127.0.0.1:9109; loopback only
    # Sessions shared by several gateways (gateway/shared_store.py, docs/shared-store.md):
    # redis://HOST:PORT/DB. Unset: SQLite in state_dir, this gateway's own.
    store_url: str | None = Field(default=None, pattern=r"^rediss?://[^\s]+$")
    store_prefix: str = Field(default="airlock", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The name this gateway's sessions are listed under ("served by"): the machine's
    # hostname unless set (two gateways on one machine: set it).
    host_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=64, pattern=r"^[^\s/]+$"
    )
    # Started as root, the gateway re-executes itself as this user, keeping only
    # CAP_NET_BIND_SERVICE (gateway/privileges.py). Unset: it runs as whoever starts it.
    user: str | None = Field(default=None, min_length=1, max_length=32)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, v: str | None) -> str | None:
        if v is None:
            return None
        _check_listen(v)
        if not ipaddress.ip_address(v.rpartition(":")[0].strip("[]")).is_loopback:
            raise ValueError(f"{v!r}: metrics are served on a loopback address only")
        return v

    @field_validator("git_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _check_listen(v)

    @property
    def git_host(self) -> str:
        return self.git_listen.rpartition(":")[0].strip("[]")

    @property
    def git_port(self) -> int:
        return int(self.git_listen.rpartition(":")[2])


class SessionDefaults(_Strict):
    idle_timeout: Duration = 3600
    lifetime: Duration = 8 * 3600
    max_lifetime: Duration = 24 * 3600  # the longest --ttl anyone may ask for
    max_requests: int = Field(default=20_000, gt=0)
    max_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_pushes: int = Field(default=1000, gt=0)


class GitProxyConfig(_Strict):
    max_request_body: int = Field(default=2 * 1024**3, gt=0)  # push packs
    max_upload_pack_body: int = Field(default=64 * 1024**2, gt=0)  # fetch negotiation
    connect_timeout: Duration = 15
    idle_timeout: Duration = 120  # no byte either way for this long ends the request
    total_timeout: Duration = 3600
    chunk_size: int = Field(default=256 * 1024, ge=4096, le=4 * 1024**2)
    # What a write grant without patterns may push (core/refrules.py): new branches under
    # agent/, and updates and deletes of the ones the session created.
    push_branches: list[str] = Field(default_factory=lambda: ["agent/**"], min_length=1)
    max_refs_per_push: int = Field(default=1000, gt=0)
    # Pack bytes held back while a fast-forward is proven from the pushed commits.
    max_proof_buffer: int = Field(default=64 * 1024**2, gt=0)

    @field_validator("push_branches")
    @classmethod
    def _push_branches(cls, v: list[str]) -> list[str]:
        try:
            parse_rules(",".join(v))
        except InvalidRefRule as exc:
            raise ValueError(str(exc)) from None
        return v

    @property
    def push_rules(self) -> tuple[RefRule, ...]:
        return parse_rules(",".join(self.push_branches))


def _rate(v: str) -> str:
    from limits import parse

    try:
        parse(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a rate; use e.g. 600/minute or 100/second") from None
    return v


Rate = Annotated[str, BeforeValidator(_rate)]


class LimitsConfig(_Strict):
    """Abuse controls; each default has its reason in docs/operations.md."""

    storage_uri: str = "async+memory://"  # async+redis://HOST:6379 for several replicas
    session_requests: Rate = "1200/minute"
    session_bytes: Rate = "8589934592/hour"  # 8 GiB an hour per session
    global_requests: Rate = "2000/second"
    session_inflight: int = Field(default=16, gt=0)
    global_inflight: int = Field(default=256, gt=0)
    max_connections: int = Field(default=4096, gt=0)
    max_connections_per_source: int = Field(default=128, gt=0)
    handshake_timeout: Duration = 10
    header_timeout: Duration = 15  # a connection with no request in progress is closed
    auth_failure_threshold: int = Field(default=10, gt=0)
    auth_backoff_max: Duration = 60
    max_headers: int = Field(default=64, gt=0)
    max_line_size: int = Field(default=8190, ge=1024)
    max_field_size: int = Field(default=8190, ge=1024)
    control_requests: Rate = "100/second"
    log_interval: Duration = 10  # repeated denials: one line with a count per interval


class StaticHost(_Strict):
    """A name the egress proxy resolves without DNS (tests, the demo, pinned hosts)."""

    name: HostName
    addresses: list[str] = Field(min_length=1)
    allow_private: bool = False  # only for decoys on this machine; logged on every use

    @field_validator("addresses")
    @classmethod
    def _addrs(cls, v: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in v]


class EgressConfig(_Strict):
    connect_ports: list[int] = Field(default_factory=lambda: [443])
    http_ports: list[int] = Field(default_factory=lambda: [80])
    connect_timeout: Duration = 10
    idle_timeout: Duration = 300
    max_tunnel_lifetime: Duration = 3600
    max_tunnels_per_session: int = Field(default=64, gt=0)
    handshake_timeout: Duration = 10
    max_header_bytes: int = Field(default=16384, ge=1024)
    max_headers: int = Field(default=100, gt=0)
    max_connections: int = Field(default=4096, gt=0)
    refuse_ech: bool = True
    session_recheck_interval: Duration = 5
    gateway_addresses: list[str] = Field(default_factory=list)  # the host's other addresses
    resolvers: list[str] = Field(default_factory=list)  # empty: the host's resolv.conf
    resolver_timeout: Duration = 3
    static: list[StaticHost] = Field(default_factory=list)
    session_tunnels: Rate = "600/minute"  # tunnels + plain requests a session may start
    session_bytes: Rate = "8589934592/hour"  # both directions, all its tunnels: 8 GiB an hour
    dns_rate: float = Field(default=50, gt=0)  # sandbox DNS queries per second per source
    dns_burst: float = Field(default=200, gt=0)

    @field_validator("connect_ports", "http_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"{p} is not a port")
        return v

    @field_validator("gateway_addresses")
    @classmethod
    def _gw(cls, v: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in v]

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        from airlock.gateway.resolver import parse_server  # the parser the resolver uses

        for entry in v:
            parse_server(entry)  # ValueError: a config error naming egress.resolvers
        return v


class SandboxConfig(_Strict):
    """Defaults for `airlock run`; each has a reason in docs/operations.md."""

    pool: str = "10.213.0.0/16"  # one /28 per sandbox; refused when it overlaps the host
    prefixlen: int = Field(default=28, ge=16, le=30)
    bundle_dir: Path = Path("/run/airlock/sandboxes")  # on a tmpfs (mounted when it is not)
    uid: int = Field(default=10000, gt=0)  # never root inside the sandbox
    memory: str = "2g"
    pids_limit: int = Field(default=512, gt=0)
    cpus: float = Field(default=2.0, gt=0)
    read_only_rootfs: bool = False
    proxy_port: int = Field(default=3128, gt=0, lt=65536)
    # A static busybox, mounted read-only into each sandbox to hold its command until the
    # session is active (host/gate.py); any image works, with or without /bin/sh.
    gate_binary: Path = Path("/bin/busybox")
    # The CAs a sandbox trusts besides the GitHub API's interception CA (host/bundle.py).
    ca_bundle: Path | None = Path("/etc/ssl/certs/ca-certificates.crt")
    allow_hosts: list[str] = Field(default_factory=list)  # egress defaults for every sandbox
    # Networks with verified rules that `supervise` keeps ready, so `airlock run` skips
    # creating them (host/sandbox.py, "spare networks").
    spare_networks: int = Field(default=2, ge=0, le=64)

    @field_validator("allow_hosts")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        from airlock.core.egress import InvalidAllowEntry, parse_allow_entry

        for entry in v:
            try:
                parse_allow_entry(entry)
            except InvalidAllowEntry as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv4 network ({exc})") from None
        return str(net)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not v[:-1].isdigit() or v[-1].lower() not in "kmg":
            raise ValueError(f"{v!r}: use a size such as 512m or 2g")
        return v


def _https_base(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme != "https":
        raise ValueError(f"{v!r}: must be an https URL")
    if parts.username or parts.password or parts.query or parts.fragment or not parts.hostname:
        raise ValueError(f"{v!r}: expected https://HOST[:PORT][/PATH] and nothing else")
    return v.rstrip("/")


_ACCOUNT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")  # GitHub logins: <= 39 chars


class GitHubAppConfig(_Strict):
    """A GitHub App: the gateway mints an installation token per session and repository owner,
    scoped to the session's repositories with contents read or write only."""

    app_id: int = Field(gt=0)
    private_key_file: Path  # PEM, mode 0600 or stricter, like a token file
    # Repository owner (account login) -> installation id of the App on that account.
    installations: dict[str, int] = Field(min_length=1)
    api_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    ca_file: Path | None = None  # trust for api_url; default: the system's
    # How soon after a session ends its tokens are revoked at GitHub (they cannot be used
    # through the gateway from the moment it ends; this bounds their life outside it).
    revoke_interval: Duration = 15

    @field_validator("api_url")
    @classmethod
    def _api(cls, v: str) -> str:
        return _https_base(v)

    @field_validator("installations")
    @classmethod
    def _installations(cls, v: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for owner, iid in v.items():
            if not _ACCOUNT_RE.fullmatch(owner):
                raise ValueError(f"installations: {owner!r} is not a GitHub account name")
            if iid <= 0:
                raise ValueError(f"installations: {owner}: the id must be a positive integer")
            out[owner.lower()] = iid  # account names are case-insensitive
        return out


class ApiConfig(_Strict):
    """The upstream's GitHub API as sandboxes see it: the egress proxy terminates TLS for its
    name (``api.github.com`` for github.com, the host itself for GitHub Enterprise, under
    ``/api/v3`` and ``/api/graphql``), decides each request against the session's grants
    (core/api_policy.py) and sends what passes to ``url`` with the upstream's credential."""

    enabled: bool = True
    url: str | None = None  # REST root; default https://api.github.com or https://HOST/api/v3
    graphql_url: str | None = None  # default: api.github.com/graphql or HOST/api/graphql
    ca_file: Path | None = None  # trust for url; default: the upstream's ca_file, else the system's
    max_pulls: int = Field(default=10, ge=0, le=1000)  # pull requests one session may open
    require_draft: bool = False  # every pull request a session opens is a draft
    title_prefix: str = Field(default="", max_length=64)  # added to each title that lacks it
    labels: list[str] = Field(default_factory=list, max_length=20)  # added by the gateway
    base_branches: list[str] = Field(default_factory=lambda: ["**"], min_length=1)
    max_body: int = Field(default=1024**2, ge=1024, le=64 * 1024**2)  # one API request's body

    @field_validator("url", "graphql_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return None if v is None else _https_base(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        for label in v:
            if not label.strip() or len(label) > 50 or any(ord(c) < 32 for c in label):
                raise ValueError(f"label {label!r}: 1 to 50 printable characters")
        return v

    @field_validator("base_branches")
    @classmethod
    def _bases(cls, v: list[str]) -> list[str]:
        try:
            parse_rules(",".join(v))
        except InvalidRefRule as exc:
            raise ValueError(str(exc)) from None
        return v


class UpstreamConfig(_Strict):
    host: HostName
    url: str
    # Exactly one credential: a token file, or a GitHub App that mints per-session tokens.
    token_file: Path | None = None
    app: GitHubAppConfig | None = None
    ca_file: Path | None = None
    api: ApiConfig = Field(default_factory=ApiConfig)

    @model_validator(mode="after")
    def _one_credential(self) -> UpstreamConfig:
        if (self.token_file is None) == (self.app is None):
            raise ValueError(
                f"upstream {self.host}: give exactly one of token_file or [upstream.app]"
            )
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https":
            raise ValueError(f"{v!r}: upstreams are reached over https only")
        if parts.username or parts.password:
            raise ValueError(f"{v!r}: credentials in the URL are not allowed; use token_file")
        if parts.query or parts.fragment:
            raise ValueError(f"{v!r}: no query or fragment allowed")
        if not parts.hostname:
            raise ValueError(f"{v!r}: no host name")
        return v.rstrip("/")

    @property
    def is_github_com(self) -> bool:
        return self.host == "github.com"

    @property
    def api_name(self) -> str:
        """The name sandboxes reach the API at (and the interception certificate names)."""
        return "api.github.com" if self.is_github_com else self.host

    @property
    def api_rest_prefix(self) -> str:
        """Where the REST API starts under ``api_name`` (GitHub Enterprise: /api/v3)."""
        return "" if self.is_github_com else "/api/v3"

    @property
    def api_graphql_path(self) -> str:
        return "/graphql" if self.is_github_com else "/api/graphql"

    @property
    def api_rest_url(self) -> str:
        """Where the gateway sends REST requests (no trailing slash)."""
        return self.api.url or f"https://{self.api_name}{self.api_rest_prefix}"

    @property
    def api_graphql_url(self) -> str:
        if self.api.graphql_url is not None:
            return self.api.graphql_url
        if self.api.url is not None:
            root = self.api.url.removesuffix("/api/v3")
            return root + ("/api/graphql" if root != self.api.url else "/graphql")
        return f"https://{self.api_name}{self.api_graphql_path}"


class Config(_Strict):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    sessions: SessionDefaults = Field(default_factory=SessionDefaults)
    git: GitProxyConfig = Field(default_factory=GitProxyConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    upstream: list[UpstreamConfig] = Field(min_length=1)

    @field_validator("upstream")
    @classmethod
    def _unique(cls, v: list[UpstreamConfig]) -> list[UpstreamConfig]:
        seen: set[str] = set()
        for u in v:
            if u.host in seen:
                raise ValueError(f"upstream host {u.host} is listed twice")
            seen.add(u.host)
        return v

    @property
    def upstream_hosts(self) -> frozenset[str]:
        return frozenset(u.host for u in self.upstream)

    def upstream_for(self, host: str) -> UpstreamConfig | None:
        for u in self.upstream:
            if u.host == host:
                return u
        return None


def _format_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README for the keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg.removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def _check_digest(path: Path, raw: bytes) -> None:
    """If ``<config>.sha256`` exists, the config must match it (integrity of generated or
    reviewed configs; `sha256sum airlock.toml > airlock.toml.sha256` writes it)."""
    digest_file = path.with_name(path.name + ".sha256")
    try:
        text = digest_file.read_text().split()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{digest_file}: cannot read ({exc.strerror})") from None
    want = text[0].lower() if text else ""
    have = hashlib.sha256(raw).hexdigest()
    if want != have:
        raise ConfigError(
            f"{path}: SHA-256 {have} does not match {digest_file}; the config changed since "
            "it was checked (re-run sha256sum after reviewing the change)"
        )


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    _check_digest(path, raw)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path)
