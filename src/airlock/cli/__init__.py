"""The ``airlock`` command line: one module per group of commands, registered here."""

from __future__ import annotations

import click

from airlock.cli import doctor, gateway, rotate, run, sandboxes, session, tools
from airlock.cli.common import AirlockGroup
from airlock.cli.install import install


@click.group(cls=AirlockGroup)
def main() -> None:
    """airlock: sandboxes that reach exactly the GitHub repositories they were granted."""


main.add_command(gateway.gateway)
main.add_command(session.session)
main.add_command(run.run)
for _command in (sandboxes.ps, sandboxes.stop, sandboxes.supervise, tools.image, tools.demo):
    main.add_command(_command)
main.add_command(doctor.doctor)
main.add_command(install)
for _command in (sandboxes.rm, sandboxes.logs, sandboxes.exec_, sandboxes.agent):
    main.add_command(_command)
main.add_command(rotate.rotate)
main.add_command(rotate.revoke_all)
