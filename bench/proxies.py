"""The hand-made alternatives: Debian's nginx as a TLS reverse proxy in front of the upstream
(adding the same Authorization header), and Debian's squid as an allowlisting CONNECT proxy.

Both listen on 127.0.0.1 only, run in the foreground as children of the bench, and are
installed from Debian's mirror by ``ensure_packages`` when missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from airlock.testing.ports import free_port
from airlock.testing.tls import make_test_ca_and_server_cert
from bench.common import die_with_parent, log, stop_process, tree_pids, wait_port

PACKAGES = {"nginx": "nginx", "squid": "squid"}


def ensure_packages() -> None:
    """apt-get install nginx and squid if their binaries are missing (idempotent)."""
    missing = [pkg for binary, pkg in PACKAGES.items() if shutil.which(binary) is None]
    if not missing:
        return
    log(f"installing {' '.join(missing)} from the Debian mirror")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
        capture_output=True,
    )
    # Debian starts packaged daemons on install where it can; the bench runs its own copies
    # on loopback, so stop any that came up (they are ours: we just installed them).
    for svc in missing:
        subprocess.run(["service", svc, "stop"], check=False, capture_output=True)


NGINX_CONF = """\
worker_processes auto;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream git_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
{servers}
}}
"""

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            proxy_pass https://git_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_set_header Authorization "{authorization}";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_ssl_trusted_certificate {upstream_ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
"""


class Nginx:
    """nginx in front of the upstream: what a user would configure by hand.

    It cannot proxy a large push: nginx's proxy stops sending the request body as soon as
    the upstream's response head arrives (only grpc_pass keeps sending, "preserve_output"),
    and git http-backend sends its head before receive-pack has read the pack. A push whose
    body is still in flight at that moment hangs until proxy_read_timeout; buffering the body
    (proxy_request_buffering on) does not help, nginx still stops mid-body. The bench gives
    nginx pushes a timeout and reports them as hung.
    """

    def __init__(self, root: Path, upstream_port: int, upstream_ca: Path, authorization: str):
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        # A CA of its own and a certificate for 127.0.0.1; git trusts it with http.sslCAInfo.
        self.tls = make_test_ca_and_server_cert(self.dir / "tls", ["localhost"], ["127.0.0.1"])
        self.port = free_port()
        servers = NGINX_SERVER.format(
            port=self.port,
            upstream_port=upstream_port,
            cert=self.tls.server_cert,
            key=self.tls.server_key,
            authorization=authorization,
            upstream_ca=upstream_ca,
        )
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(dir=self.dir, upstream_port=upstream_port, servers=servers)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> Path:
        return self.tls.ca_cert

    def url(self, repo: str) -> str:
        return f"https://127.0.0.1:{self.port}/{repo}.git"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        wait_port(self.port, 20, self.proc)

    def pids(self) -> list[int]:
        assert self.proc is not None
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: nginx's fast shutdown
        self.proc = None


SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log none
cache_store_log none
cache deny all
cache_mem 8 MB
coredump_dir {dir}
hosts_file {dir}/hosts
dns_nameservers 127.0.0.1
visible_hostname airlock-bench
shutdown_lifetime 1 seconds
acl sink dstdomain {sink_name}
acl CONNECT method CONNECT
http_access allow CONNECT sink
http_access deny all
"""


class Squid:
    """squid with an allowlist ACL: CONNECT to the sink's name only, nothing else."""

    def __init__(self, root: Path, sink_name: str) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.dir / "hosts").write_text(f"127.0.0.1 {sink_name}\n")
        (self.dir / "squid.conf").write_text(
            SQUID_CONF.format(port=self.port, dir=self.dir, sink_name=sink_name)
        )
        # squid drops to its cache_effective_user (proxy) before writing its log and pid.
        try:
            user = pwd.getpwnam("proxy")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        except KeyError:
            os.chmod(self.dir, 0o777)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["squid", "-N", "-f", str(self.dir / "squid.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        wait_port(self.port, 30, self.proc)

    def pids(self) -> list[int]:
        assert self.proc is not None
        return tree_pids(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None
