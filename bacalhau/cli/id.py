"""`bacalhau id`: the node's peer ID and multiaddrs."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import emit, output_option


@click.command("id")
@output_option(default="json")
@click.pass_context
def id_(ctx: click.Context, output: str) -> None:
    """Print the peer ID and multiaddrs of the node the client talks to."""
    info = client_from(ctx).node_id()
    if output == "table":
        click.echo(info["id"])
        for addr in info["addrs"]:
            click.echo(f"  {addr}")
        return
    emit(info, output)
