"""The top-level group: root-only commands are refused for others after option parsing, and
an error no command handled is one line and an exit code, never a traceback."""

from __future__ import annotations

import errno
import subprocess

import click
import pytest
from click.testing import CliRunner

from airlock.cli.common import AirlockGroup, last_resort_message
from airlock.host.control_client import ControlError
from airlock.host.dockerclient import DockerUnavailable


def _group(exc: BaseException | None = None) -> click.Group:
    @click.group(cls=AirlockGroup)
    def main() -> None:
        pass

    @click.command()
    @click.option("--flag", is_flag=True)
    def run(flag: bool) -> None:
        click.echo("ran")

    @click.command()
    def boom() -> None:
        assert exc is not None
        raise exc

    main.add_command(run)
    main.add_command(boom)
    return main


def test_root_only_commands_are_refused_for_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(_group(), ["run"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "airlock run must run as root" in result.output
    assert "Docker networks" in result.output
    help_text = CliRunner().invoke(_group(), ["run", "--help"])
    assert help_text.exit_code == 0 and "--flag" in help_text.output
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert CliRunner().invoke(_group(), ["run"]).output == "ran\n"


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/run/airlock/x"),
            "/run/airlock/x: permission denied",
        ),
        (FileNotFoundError(errno.ENOENT, "No such file", "/etc/x"), "/etc/x: no such file"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (ControlError("the gateway is not running"), "the gateway is not running"),
        (
            DockerUnavailable("Docker is not running: no socket at /x", "not_running"),
            "no socket at /x",
        ),
        (
            subprocess.CalledProcessError(
                32, ["mount", "-t", "tmpfs"], stderr=b"mount: only root\n"
            ),
            "mount exited with 32: mount: only root",
        ),
    ],
)
def test_an_unhandled_error_is_one_line(exc: BaseException, needle: str) -> None:
    result = CliRunner().invoke(_group(exc), ["boom"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("airlock: ")
    assert needle in result.output
    assert "Traceback" not in result.output


def test_a_bug_is_not_hidden() -> None:
    assert last_resort_message(ValueError("a bug")) is None
    result = CliRunner().invoke(_group(ValueError("a bug")), ["boom"])
    assert isinstance(result.exception, ValueError)


def test_interrupt_is_130() -> None:
    result = CliRunner().invoke(_group(KeyboardInterrupt()), ["boom"])
    assert result.exit_code == 130
