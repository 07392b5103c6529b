"""What a sandbox's container looks like: `docker run` options turned into a container plan.

Pure: :func:`plan_container` takes the user's :class:`RunSpec`, the image's own config (as
Docker reports it in ``Config``) and the sandbox config, and returns a :class:`ContainerPlan`
with every value the Docker API call needs. No Docker, no files: unit-testable.

The sandbox manager adds what airlock itself owns (its mounts, its environment, its labels,
the network and the security options) and is the only place that talks to Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docker.types import Mount

from airlock.config import SandboxConfig

__all__ = ["ContainerPlan", "RunSpec", "SpecError", "plan_container"]


class SpecError(ValueError):
    """A `docker run` option airlock cannot honour; the message says what to do."""


@dataclass
class RunSpec:
    image: str
    command: list[str]
    grants: list[str]
    allow_hosts: list[str] = field(default_factory=list)
    name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    read_only: bool | None = None
    ttl: int | None = None
    idle_timeout: int | None = None
    remove: bool = False  # --rm: the container goes when it exits


@dataclass(frozen=True)
class ContainerPlan:
    """The user-visible shape of the container; airlock's own parts are added by the manager."""

    argv: list[str]  # entrypoint + command, run by the gate once the session is active
    user: str
    working_dir: str | None
    environment: dict[str, str]
    mounts: list[Mount]
    tmpfs: dict[str, str]
    labels: dict[str, str]
    hostname: str | None
    mem_limit: str
    nano_cpus: int
    pids_limit: int
    read_only: bool
    init: bool


def _mounts(volumes: list[str]) -> list[Mount]:
    mounts = []
    for v in volumes:
        parts = v.split(":")
        if len(parts) not in (2, 3) or not parts[0].startswith("/"):
            raise SpecError(f"-v {v!r}: use /HOST/PATH:/CONTAINER/PATH[:ro]")
        if "docker.sock" in parts[0]:
            raise SpecError("-v: the Docker socket is never given to a sandbox")
        read_only = len(parts) == 3 and parts[2] == "ro"
        mounts.append(Mount(parts[1], parts[0], type="bind", read_only=read_only))
    return mounts


def plan_container(
    spec: RunSpec, image_config: dict[str, Any], cfg: SandboxConfig
) -> ContainerPlan:
    entrypoint = list(image_config.get("Entrypoint") or [])
    command = spec.command or list(image_config.get("Cmd") or []) or ["/bin/sh"]
    return ContainerPlan(
        argv=[*entrypoint, *command],
        user=f"{cfg.uid}:{cfg.uid}",
        working_dir="/tmp" if not spec.volumes else None,
        environment=dict(spec.env),
        mounts=_mounts(spec.volumes),
        tmpfs={"/tmp": "rw,nosuid,nodev,size=512m"},
        labels={},
        hostname=None,
        mem_limit=cfg.memory,
        nano_cpus=int(cfg.cpus * 1e9),
        pids_limit=cfg.pids_limit,
        read_only=cfg.read_only_rootfs if spec.read_only is None else spec.read_only,
        init=False,
    )
