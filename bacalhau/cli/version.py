"""`bacalhau version`."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.errors import ApiError
from bacalhau.version import VERSION


@click.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """Print the client's version and, when one is reachable, the node's."""
    click.echo(f"Client: {VERSION}")
    try:
        click.echo(f"Server: {client_from(ctx).version()['version']}")
    except ApiError as exc:
        click.echo(f"Server: unreachable ({exc})", err=True)
