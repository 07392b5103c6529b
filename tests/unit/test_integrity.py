"""The integrity manifest: parse/render/replace, the verdicts, where it may live, the file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from airlock.config import Config, parse_config
from airlock.host import integrity as ig


def config(tmp_path: Path, **gateway: object) -> Config:
    gw: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "control_socket": str(tmp_path / "run" / "control.sock"),
        "integrity_manifest": str(tmp_path / "host" / "integrity.json"),
    }
    gw.update(gateway)
    data = {
        "gateway": gw,
        "upstream": [
            {"host": "github.example.com", "url": "https://github.example.com", "token_file": "/t"}
        ],
    }
    return parse_config(data, Path("test.toml"))


def test_record_image_then_units_both_kept_and_replaced(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ig.record_image(cfg, "sandbox", "airlock/sandbox:1", "sha256:aaa")
    ig.record_image(cfg, "gateway", "airlock/gateway:1", "sha256:bbb")
    ig.record_image(cfg, "sandbox", "airlock/sandbox:2", "sha256:ccc")
    path = ig.manifest_path(cfg)
    ig.record_units(path, [("/etc/systemd/system/a.service", b"x")])
    m = ig.load_manifest(path)
    assert m is not None
    images = {e.name: (e.location, e.digest) for e in m.of_kind("image")}
    assert images == {
        "sandbox": ("airlock/sandbox:2", "sha256:ccc"),
        "gateway": ("airlock/gateway:1", "sha256:bbb"),
    }
    (unit,) = m.of_kind("unit")
    assert unit.digest == ig.sha256_bytes(b"x") and unit.name == "a.service"
    raw = json.loads(path.read_text())
    assert raw["version"] == 1
    assert {
        "kind": "image",
        "name": "gateway",
        "tag": "airlock/gateway:1",
        "image_id": "sha256:bbb",
    } in raw["entries"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == [".integrity.lock", "integrity.json"]


def test_concurrent_records_all_land(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    threads = [
        threading.Thread(target=ig.record_image, args=(cfg, f"k{i}", f"t:{i}", f"sha256:{i}"))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    m = ig.load_manifest(ig.manifest_path(cfg))
    assert m is not None and len(m.of_kind("image")) == 8


@pytest.mark.parametrize(
    "where", ["state/integrity.json", "run/integrity.json", "state/sub/m.json"]
)
def test_manifest_refused_where_the_gateway_writes(tmp_path: Path, where: str) -> None:
    cfg = config(tmp_path, integrity_manifest=str(tmp_path / where))
    with pytest.raises(ig.IntegrityError, match="gateway can write"):
        ig.record_image(cfg, "sandbox", "t", "sha256:1")
    assert not (tmp_path / where).exists()


def test_manifest_refused_beside_the_audit_log(tmp_path: Path) -> None:
    cfg = config(tmp_path, audit_log=str(tmp_path / "host" / "audit.jsonl"))
    with pytest.raises(ig.IntegrityError, match="gateway can write"):
        ig.manifest_path(cfg)


def test_a_group_writable_directory_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "host").mkdir()
    os.chmod(tmp_path / "host", 0o777)
    with pytest.raises(ig.IntegrityError, match="no one else"):
        ig.record_image(cfg, "sandbox", "t", "sha256:1")


def test_default_manifest_is_outside_the_default_gateway_dirs() -> None:
    cfg = parse_config(
        {
            "upstream": [
                {
                    "host": "github.example.com",
                    "url": "https://github.example.com",
                    "token_file": "/t",
                }
            ]
        },
        Path("x"),
    )
    assert ig.manifest_path(cfg) == Path("/var/lib/airlock-host/integrity.json")


@pytest.mark.parametrize(
    "text, msg",
    [
        ("{", "not valid JSON"),
        ('{"version": 2, "entries": []}', "version 1"),
        ('{"version": 1, "entries": {}}', "not a list"),
        ('{"version": 1, "entries": [{"kind": "x", "name": "n"}]}', "unknown kind"),
        ('{"version": 1, "entries": [{"kind": "unit", "name": "n"}]}', "incomplete"),
    ],
)
def test_bad_manifests_are_named(text: str, msg: str) -> None:
    with pytest.raises(ig.IntegrityError, match=msg):
        ig.parse_manifest(text)


def test_render_parse_round_trip() -> None:
    m = ig.Manifest(
        (ig.Entry("unit", "a.service", "00", "/a"), ig.Entry("image", "s", "sha256:1", "t"))
    )
    assert set(ig.parse_manifest(ig.render_manifest(m)).entries) == set(m.entries)


def test_verify_units() -> None:
    m = ig.Manifest(
        (
            ig.Entry("unit", "same.service", ig.sha256_bytes(b"a"), "/same"),
            ig.Entry("unit", "edited.service", ig.sha256_bytes(b"a"), "/edited"),
            ig.Entry("unit", "gone.service", ig.sha256_bytes(b"a"), "/gone"),
        )
    )
    files: dict[str, bytes] = {"/same": b"a", "/edited": b"a\nExecStartPre=/bin/evil\n"}

    def read(p: str) -> bytes | OSError:
        return files[p] if p in files else FileNotFoundError(2, "No such file or directory")

    got = {v.name: v for v in ig.verify_units(m, read)}
    assert got["unit:same.service"].ok
    assert (
        not got["unit:edited.service"].ok and "changed since" in got["unit:edited.service"].detail
    )
    assert not got["unit:gone.service"].ok and "airlock install" in got["unit:gone.service"].detail


def test_verify_images() -> None:
    m = ig.Manifest(
        (
            ig.Entry("image", "sandbox", "sha256:1", "s:1"),
            ig.Entry("image", "gateway", "sha256:2", "g:1"),
            ig.Entry("image", "other", "sha256:3", "o:1"),
        )
    )
    now = {"s:1": "sha256:1", "g:1": "sha256:9"}
    got = {v.name: v for v in ig.verify_images(m, now.get)}
    assert got["image:sandbox"].ok
    assert not got["image:gateway"].ok and "other content" in got["image:gateway"].detail
    assert not got["image:other"].ok and "not in Docker" in got["image:other"].detail


def test_a_retagged_image_is_not_recorded_as_trusted_again(tmp_path: Path) -> None:
    """`airlock image` finding its tag already there (not built now) must not re-record
    whatever the tag points at: a replaced image stays a mismatch for doctor."""
    cfg = config(tmp_path)
    ig.record_image(cfg, "gateway", "airlock/gateway:1", "sha256:built")
    ig.record_image(cfg, "gateway", "airlock/gateway:1", "sha256:built", built=False)  # same
    with pytest.raises(ig.IntegrityError, match="was replaced"):
        ig.record_image(cfg, "gateway", "airlock/gateway:1", "sha256:other", built=False)
    m = ig.load_manifest(ig.manifest_path(cfg))
    assert m is not None
    assert [e.digest for e in m.of_kind("image")] == ["sha256:built"]
    # A tag seen for the first time (built elsewhere, never recorded) is recorded.
    ig.record_image(cfg, "sandbox", "airlock/sandbox:9", "sha256:first", built=False)
    m = ig.load_manifest(ig.manifest_path(cfg))
    assert m is not None
    assert {e.name: e.digest for e in m.of_kind("image")}["sandbox"] == "sha256:first"
