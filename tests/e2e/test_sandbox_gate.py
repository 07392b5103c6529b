"""The gate works for any image: one without /bin/sh is held until activation and then runs.

The gate's shell is the host's static busybox, mounted read-only (host/gate.py); the image
here holds nothing but one copy of busybox at /app/busybox, so there is no /bin/sh to use.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from airlock.host.containerspec import RunSpec
from airlock.host.gate import GATE_PATH
from tests.e2e.conftest import E2E, Sandboxes
from tests.world import HOST

pytestmark = E2E
POOL = "10.216.96.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)
REPO = "airlock-test/no-shell"


@pytest.fixture(scope="module")
def no_shell_image(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tar = tmp_path_factory.mktemp("noshell") / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add("/bin/busybox", arcname="app/busybox")
        for name in ("tmp", "etc", "run"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
    docker_client.api.import_image_from_file(str(tar), repository=REPO, tag="e2e")
    yield f"{REPO}:e2e"
    docker_client.images.remove(f"{REPO}:e2e", force=True)


def test_the_image_really_has_no_shell(
    docker_client: docker.DockerClient, no_shell_image: str
) -> None:
    """Control: started without airlock's gate, /bin/sh is not there."""
    name = f"airlock-test-noshell-{os.getpid()}"
    try:
        with pytest.raises(docker.errors.DockerException):
            docker_client.containers.run(
                no_shell_image, ["/bin/sh", "-c", "true"], network_mode="none", name=name
            )
    finally:
        # The start failed, so `remove=True` would never have removed the created container.
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(name, force=True)


def test_an_image_without_a_shell_is_gated_and_runs(
    sandboxes: Sandboxes, no_shell_image: str
) -> None:
    command = [
        "/app/busybox",
        "sh",
        "-c",
        # Runs only after the host wrote the ready file (after activation); the gate's own
        # binary is there read-only and cannot be replaced from inside.
        f"test -e /run/airlock/ready && test ! -e /bin/sh && ! touch {GATE_PATH} 2>/dev/null "
        "&& echo GATED-OK",
    ]
    sb = sandboxes.manager.start(
        RunSpec(image=no_shell_image, command=command, grants=[f"{HOST}/acme/gate:read"])
    )
    sandboxes.ids.append(sb.id)
    try:
        code = sandboxes.wait(sb, 60)
        out = sandboxes.logs(sb)
        assert code == 0, out
        assert "GATED-OK" in out
        session = sandboxes.world.control.show(sb.session_id or "")
        assert session["state"] == "active"
    finally:
        sandboxes.teardown(sb)
    assert sandboxes.leftovers(sb.id) == []


def test_a_missing_gate_binary_is_a_clear_error(sandboxes: Sandboxes, tmp_path: Path) -> None:
    from airlock.config import load_config
    from airlock.host.sandbox import SandboxError, SandboxManager

    config = load_config(sandboxes.world.config)
    broken = config.model_copy(
        update={"sandbox": config.sandbox.model_copy(update={"gate_binary": tmp_path / "nope"})}
    )
    manager = SandboxManager(broken, client=sandboxes.client)
    with pytest.raises(SandboxError, match="busybox-static"):
        manager.start(sandboxes.spec("true"))
