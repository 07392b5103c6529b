"""The gateway's container image, built offline: a debootstrapped Debian with Python, a venv
with airlock's runtime dependencies (pinned by hash), and airlock itself as a wheel.

Two steps, both cached:

1. ``airlock/gateway-base:<base key>``: ``debootstrap --variant=minbase`` with ``python3``,
   ``python3-venv`` (Debian's ensurepip, offline) and ``ca-certificates``, through the same
   machinery as the sandbox image (host/images.py). Everything in ``/usr/bin`` and
   ``/usr/sbin`` but the Python interpreter is removed (no shell, no coreutils, no apt, no
   setuid binary anywhere), as are docs and man pages; ``docker import`` makes it an image.
2. ``airlock/gateway:<key>``: ``docker build`` FROM that local image with the network off. A
   build stage makes ``/opt/airlock`` (a venv), installs the wheels downloaded on the host
   (``pip download --require-hashes`` of the runtime closure of ``[project].dependencies``
   from ``requirements.lock``; installed with ``--no-index --require-hashes``) and
   airlock's own wheel, and removes pip; the final stage copies only the venv onto a fresh
   base and adds the gateway's user (``gateway.container.uid``). Every ``RUN`` is exec
   form: there is no shell in the image.

The key hashes everything that shapes the image: this recipe, the base key, the uid, the
pinned lines of the runtime closure and airlock's source files. Change one and a new image
is built; otherwise the tag exists and nothing runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from airlock.config import Config
from airlock.host import images
from airlock.host.images import ImageBuildError, Progress

__all__ = [
    "BASE_PACKAGES",
    "BASE_REPOSITORY",
    "CONFIG_PATH",
    "REPOSITORY",
    "VENV",
    "LockEntry",
    "dockerfile",
    "ensure_gateway_image",
    "gateway_image_tag",
    "parse_lock",
    "runtime_closure",
]

# Bump when the recipe changes in a way the other inputs do not capture.
RECIPE_VERSION = 1
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
BASE_REPOSITORY = "airlock/gateway-base"
REPOSITORY = "airlock/gateway"
VENV = "/opt/airlock"
CONFIG_PATH = "/etc/airlock/airlock.toml"  # where the container reads its (translated) config
USER_NAME = "airlock"
#: On the build stage's image (the wheels and pip), removed once the final image exists.
BUILD_STAGE_LABEL = "org.airlock.gateway-build-stage"
# What stays in the binary directories: the interpreter and nothing else.
_KEEP_BINARIES = re.compile(r"^python3(\.\d+)?$")
_BIN_DIRS = ("usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin", "bin", "sbin")
_DEAD_WEIGHT = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian")


def _base_key() -> str:
    recipe = {
        "recipe": RECIPE_VERSION,
        "suite": images.SUITE,
        "variant": images.VARIANT,
        "packages": sorted(BASE_PACKAGES),
        "keep": _KEEP_BINARIES.pattern,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


BASE_KEY = _base_key()


# --- the runtime closure from requirements.lock (pure) ---------------------------------------


@dataclass(frozen=True)
class LockEntry:
    name: str  # normalised (PEP 503)
    pin: str  # the "name==version \ --hash=..." block as the lock has it
    via: tuple[str, ...]  # normalised names of what pulls it in; "airlock" for pyproject


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, LockEntry]:
    """pip-compile's output: each pinned requirement with its hashes and its ``# via``."""
    entries: dict[str, LockEntry] = {}
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            blocks.append([line])
        elif blocks and line.startswith("    "):
            blocks[-1].append(line)
    for block in blocks:
        name = _normalise(re.split(r"[=<>!~ \[;]", block[0], maxsplit=1)[0])
        pin = [ln for ln in block if not ln.strip().startswith("#")]
        via: list[str] = []
        comments = [ln.strip()[1:].strip() for ln in block if ln.strip().startswith("#")]
        for c in comments:
            c = c.removeprefix("via").strip()
            if c:
                via.append("airlock" if c.startswith("airlock") else _normalise(c.split()[0]))
        entries[name] = LockEntry(name, "\n".join(pin), tuple(via))
    return entries


def runtime_closure(lock: dict[str, LockEntry], dependencies: Iterable[str]) -> list[LockEntry]:
    """The entries needed at run time: ``[project].dependencies`` and whatever the lock says
    they (transitively) pull in; never what only the test extra or its tools need."""
    direct = {_normalise(re.split(r"[=<>!~ \[;]", d, maxsplit=1)[0]) for d in dependencies}
    missing = sorted(direct - set(lock))
    if missing:
        raise ImageBuildError(
            f"requirements.lock pins none of {', '.join(missing)}: regenerate it (pip-compile)"
        )
    needed = set(direct)
    changed = True
    while changed:
        changed = False
        for e in lock.values():
            if e.name not in needed and any(v in needed for v in e.via):
                needed.add(e.name)
                changed = True
    return [lock[n] for n in sorted(needed)]


def dockerfile(base: str, uid: int, airlock_wheel: str, key: str) -> str:
    """The two-stage build; exec-form RUNs only (the base has no shell)."""
    pip = [f"{VENV}/bin/python", "-m", "pip"]
    quiet = ["--no-cache-dir", "--disable-pip-version-check", "--no-index", "--find-links=/wheels"]
    add_user = (
        "open('/etc/passwd','a').write("
        f"'{USER_NAME}:x:{uid}:{uid}:airlock gateway:/nonexistent:/nonexistent\\n');"
        f"open('/etc/group','a').write('{USER_NAME}:x:{uid}:\\n')"
    )
    steps = [
        f"FROM {base} AS build",
        f"LABEL {BUILD_STAGE_LABEL}={key}",
        "COPY wheels /wheels",
        _run(["/usr/bin/python3", "-m", "venv", VENV]),
        _run([*pip, "install", *quiet, "--require-hashes", "-r", "/wheels/requirements.txt"]),
        _run([*pip, "install", *quiet, "--no-deps", f"/wheels/{airlock_wheel}"]),
        _run([*pip, "uninstall", "--yes", "--quiet", "pip", "setuptools"]),
        "",
        f"FROM {base}",
        f"COPY --from=build {VENV} {VENV}",
        _run(["/usr/bin/python3", "-c", add_user]),
        f"ENV PATH={VENV}/bin:/usr/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 HOME=/nonexistent",
        f"USER {uid}:{uid}",
        "WORKDIR /",
        f"LABEL org.airlock.image-key={key} org.airlock.gateway-image=1",
        f'ENTRYPOINT ["{VENV}/bin/python", "-P", "-m", "airlock.cli"]',
        f'CMD ["gateway", "--config", "{CONFIG_PATH}"]',
    ]
    return "\n".join(steps) + "\n"


def _run(argv: list[str]) -> str:
    return "RUN " + json.dumps(argv)


# --- inputs on this machine ---------------------------------------------------------------------


def project_root() -> Path:
    """The checkout airlock runs from (its pyproject.toml and requirements.lock)."""
    import airlock

    root = Path(airlock.__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "requirements.lock").is_file()):
        raise ImageBuildError(
            f"the gateway image is built from airlock's checkout; {root} has no pyproject.toml "
            "and requirements.lock (install airlock from a checkout: pip install -e .)"
        )
    return root


def _source_files(root: Path) -> Iterator[Path]:
    yield root / "pyproject.toml"
    for p in sorted((root / "src" / "airlock").rglob("*")):
        # deploy/ (the seccomp profile) is read on the host, never part of the image.
        if p.is_file() and not {"__pycache__", "deploy"} & set(p.parts) and p.suffix != ".pyc":
            yield p


def _inputs(root: Path) -> tuple[list[LockEntry], str]:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    deps: list[str] = pyproject["project"]["dependencies"]
    closure = runtime_closure(parse_lock((root / "requirements.lock").read_text()), deps)
    h = hashlib.sha256()
    for p in _source_files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return closure, h.hexdigest()


def _key(uid: int, closure: list[LockEntry], sources: str) -> str:
    blob = {
        "recipe": RECIPE_VERSION,
        "base": BASE_KEY,
        "uid": uid,
        "pins": [e.pin for e in closure],
        "sources": sources,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def gateway_image_tag(config: Config) -> str:
    """The gateway container's image: ``gateway.container.image``, else the one built here."""
    if config.gateway.container.image is not None:
        return config.gateway.container.image
    closure, sources = _inputs(project_root())
    return f"{REPOSITORY}:{_key(config.gateway.container.uid, closure, sources)}"


# --- the build ---------------------------------------------------------------------------------


def _trim_gateway_root(root: Path, log: Path, say: Progress) -> None:
    say("removing everything but the interpreter from the binary directories")
    for sub in _BIN_DIRS:
        d = root / sub
        if d.is_symlink() or not d.is_dir():
            continue  # merged /usr: /bin is a link to usr/bin
        for entry in d.iterdir():
            if not _KEEP_BINARIES.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    for sub in _DEAD_WEIGHT:
        if (root / sub).is_dir():
            shutil.rmtree(root / sub)
    # No set-uid or set-gid file anywhere (no_new_privs makes them inert; none is needed).
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                p.unlink()
    with open(log, "a") as f:
        f.write("trimmed the gateway root\n")


def _ensure_base(
    client: docker.DockerClient, cache_dir: Path, say: Progress, mirror: str | None
) -> str:
    tag = f"{BASE_REPOSITORY}:{BASE_KEY}"
    if images.image_exists(client, tag):
        return tag
    tarball = cache_dir / f"gateway-rootfs-{BASE_KEY}.tar"
    digest = tarball.with_suffix(".tar.sha256")
    if not (tarball.is_file() and digest.is_file()):
        source = mirror or images.debian_mirror()
        say(f"building the gateway's base rootfs with debootstrap ({images.SUITE}, python3)")
        images.build_rootfs_tarball(
            cache_dir,
            tarball,
            digest,
            say,
            source,
            packages=BASE_PACKAGES,
            customize=_trim_gateway_root,
        )
    say(f"importing {tarball.name} as {tag}")
    images.import_rootfs(
        client, tarball, digest, tag, changes=["ENV PATH=/usr/bin", "ENV LANG=C.UTF-8"]
    )
    return tag


def _download_wheels(closure: list[LockEntry], dest: Path, log: Path) -> None:
    req = dest / "requirements.txt"
    req.write_text("\n".join(e.pin for e in closure) + "\n")
    images.run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            "-r",
            str(req),
        ],
        log,
    )


def _cached_wheels(
    cache_dir: Path, closure: list[LockEntry], dest: Path, log: Path, say: Progress
) -> None:
    """The closure's wheels into ``dest``: downloaded once per set of pins, then copied
    from the cache (pip checks every hash again when the build installs them)."""
    pins = hashlib.sha256("\n".join(e.pin for e in closure).encode()).hexdigest()[:16]
    cached = cache_dir / f"gateway-wheels-{pins}"
    if not (cached / "requirements.txt").is_file():
        say(f"downloading {len(closure)} pinned wheels (pip download --require-hashes)")
        partial = Path(tempfile.mkdtemp(prefix="gateway-wheels-", dir=cache_dir))
        try:
            _download_wheels(closure, partial, log)
            os.replace(partial, cached)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    for f in cached.iterdir():
        shutil.copy2(f, dest / f.name)


def _build_airlock_wheel(root: Path, dest: Path, log: Path) -> str:
    before = set(dest.glob("airlock-*.whl"))
    images.run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--wheel-dir",
            str(dest),
            str(root),
        ],
        log,
    )
    made = sorted(set(dest.glob("airlock-*.whl")) - before)
    if len(made) != 1:
        raise ImageBuildError(f"pip wheel made {len(made)} airlock wheels in {dest}")
    return made[0].name


def ensure_gateway_image(
    client: docker.DockerClient,
    config: Config,
    *,
    cache_dir: Path = Path("/var/cache/airlock"),
    progress: Progress | None = None,
    mirror: str | None = None,
) -> str:
    """The gateway image's tag, built first if it is not there (ImageBuildError)."""
    say: Progress = progress or (lambda _msg: None)
    if mirror is not None:
        mirror = images.check_mirror(mirror)
    root = project_root()
    closure, sources = _inputs(root)
    uid = config.gateway.container.uid
    key = _key(uid, closure, sources)
    tag = f"{REPOSITORY}:{key}"
    built = False
    if not images.image_exists(client, tag):
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with images.locked(cache_dir / ".gateway-image.lock"):
            if not images.image_exists(client, tag):
                _build(client, cache_dir, root, closure, uid, key, tag, say, mirror)
                built = True
    image_id = str(client.images.get(tag).id)
    _record(config, tag, image_id, built=built)
    return tag


def _build(
    client: docker.DockerClient,
    cache_dir: Path,
    root: Path,
    closure: list[LockEntry],
    uid: int,
    key: str,
    tag: str,
    say: Progress,
    mirror: str | None,
) -> None:
    base = _ensure_base(client, cache_dir, say, mirror)
    work = Path(tempfile.mkdtemp(prefix="gateway-build-", dir=cache_dir))
    try:
        log = work / "build.log"
        wheels = work / "context" / "wheels"
        wheels.mkdir(parents=True)
        _cached_wheels(cache_dir, closure, wheels, log, say)
        say("building airlock's wheel")
        wheel = _build_airlock_wheel(root, wheels, log)
        (work / "context" / "Dockerfile").write_text(dockerfile(base, uid, wheel, key))
        say(f"docker build {tag} (network off)")
        try:
            _docker_build(client, work / "context", tag)
        finally:
            _remove_build_stage(client, key)
    finally:
        images.remove_tree(work)


def _remove_build_stage(client: docker.DockerClient, key: str) -> None:
    try:
        stages = client.images.list(filters={"label": f"{BUILD_STAGE_LABEL}={key}"})
        for image in stages:
            if not image.tags:
                client.images.remove(image.id, noprune=False)
    except docker.errors.APIError:
        pass  # only disk space; `docker image prune` finds it


def _docker_build(client: docker.DockerClient, context: Path, tag: str) -> None:
    lines: list[str] = []
    try:
        stream: Any = client.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(
                    "docker build failed: "
                    + str(chunk["error"]).strip()
                    + "\n"
                    + "".join(lines[-15:])
                )
            if "stream" in chunk:
                lines.append(str(chunk["stream"]))
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker build failed: {exc.explanation or exc}") from None
    if not images.image_exists(client, tag):
        raise ImageBuildError(f"docker build did not produce {tag}")


def _record(config: Config, tag: str, image_id: str, *, built: bool) -> None:
    from airlock.host import integrity

    try:
        integrity.record_image(config, "gateway", tag, image_id, built=built)
    except integrity.IntegrityError as exc:
        raise images.ImageBuildError(str(exc)) from None
