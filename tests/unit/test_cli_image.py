"""`airlock image --mirror`: which mirror a build uses, and what is refused; the mirror is
where packages come from, not part of the image's identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest
from click.testing import CliRunner

from airlock.host import images
from airlock.host.images import ImageBuildError, check_mirror, ensure_sandbox_image


class _Images:
    def __init__(self) -> None:
        self.present: set[str] = set()

    def get(self, tag: str) -> object:
        if tag not in self.present:
            raise docker.errors.ImageNotFound(tag)
        return object()


class _Client:
    def __init__(self) -> None:
        self.images = _Images()


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    mirrors: list[str] = []

    def build(cache: Path, tarball: Path, digest: Path, say: Any, mirror: str) -> None:
        mirrors.append(mirror)
        tarball.write_bytes(b"x")
        digest.write_text("00  x\n")

    def imp(client: _Client, tarball: Path, digest: Path, tag: str) -> None:
        client.images.present.add(tag)

    monkeypatch.setattr(images, "_build_rootfs_tarball", build)
    monkeypatch.setattr(images, "_import", imp)
    return mirrors


def test_mirror_option_beats_the_environment_which_beats_apt(
    built: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRLOCK_DEBIAN_MIRROR", "http://env.test/debian")
    said: list[str] = []
    tag = ensure_sandbox_image(
        _Client(),
        cache_dir=tmp_path / "a",
        mirror="http://option.test/debian/",
        progress=said.append,
    )
    assert tag == images.sandbox_image_tag()
    assert built == ["http://option.test/debian"]
    assert any("from http://option.test/debian" in m for m in said)
    ensure_sandbox_image(_Client(), cache_dir=tmp_path / "b")
    assert built[-1] == "http://env.test/debian"


def test_the_key_does_not_depend_on_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    before = images._image_key()
    monkeypatch.setenv("AIRLOCK_DEBIAN_MIRROR", "http://elsewhere.test/debian")
    assert images._image_key() == before


@pytest.mark.parametrize(
    "url",
    ["ftp://m.test/debian", "m.test/debian", "https://user:pw@m.test/debian", "http:///debian"],
)
def test_bad_mirrors_are_refused(url: str) -> None:
    with pytest.raises(ImageBuildError, match="mirror"):
        check_mirror(url)


def test_good_mirrors() -> None:
    assert check_mirror("https://m.test/debian/") == "https://m.test/debian"
    assert check_mirror("file:///srv/mirror") == "file:///srv/mirror"


def test_the_cli_refuses_a_bad_mirror_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from airlock.cli import main

    monkeypatch.setattr("os.geteuid", lambda: 0)
    result = CliRunner().invoke(main, ["image", "--mirror", "ftp://m.test/debian"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "ftp://m.test/debian" in result.output


def test_the_recipe_gives_python_users_a_venv_and_names_no_mirror() -> None:
    changes = "\n".join(images._CHANGES)
    assert f"PATH={images.VENV}/bin:" in changes
    assert "python3-venv" in images.PACKAGES
    assert "http" not in images.NO_SOURCES
