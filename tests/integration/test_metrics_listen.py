"""The optional loopback metrics port (`gateway.metrics_listen`): metrics only, nothing else."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.testing.ports import free_port
from tests.world import HOST, World


class MetricsWorld(World):
    def __init__(self, root: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(root, gateway_extra=f'metrics_listen = "127.0.0.1:{self.metrics_port}"')


@pytest.fixture(scope="module")
def mw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsWorld]:
    w = MetricsWorld(tmp_path_factory.mktemp("metrics"))
    w.start()
    yield w
    w.stop()


def _get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def _value(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_port_serves_prometheus_text_that_counts_requests(
    mw: MetricsWorld, tmp_path: Path
) -> None:
    status, ctype, before = _get(mw.metrics_port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "# TYPE airlock_sessions gauge" in before
    mw.make_repo("acme", "metered")
    b = mw.session(f"{HOST}/acme/metered:read")
    assert mw.clone(b, "acme/metered", tmp_path / "m").returncode == 0
    _, _, after = _get(mw.metrics_port, "/metrics")
    assert "# TYPE airlock_requests_total counter" in after
    assert _value(after, "airlock_requests_total") > _value(before, "airlock_requests_total")


@pytest.mark.parametrize(
    "path", ["/v1/sessions", "/v1/health", "/v1/metrics", "/v1/revoke-all", "/"]
)
def test_metrics_port_has_no_control_api(mw: MetricsWorld, path: str) -> None:
    status, _, _ = _get(mw.metrics_port, path)
    assert status == 404
