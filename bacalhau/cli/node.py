"""`bacalhau node list`."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import emit, output_option, table


def _mem(n: int) -> str:
    return f"{n / 1024**3:.1f}G"


@click.group()
def node() -> None:
    """Look at the cluster's nodes."""


@node.command("list")
@output_option()
@click.pass_context
def list_nodes(ctx: click.Context, output: str) -> None:
    """List the compute nodes the requester knows (those heard from recently)."""
    nodes = client_from(ctx).nodes()
    if output != "table":
        emit(nodes, output)
        return
    rows = []
    for n in nodes:
        free, total = n["capacity_free"], n["capacity_total"]
        rows.append([
            n["node_id"], ",".join(n["node_types"]), ",".join(n["engines"]),
            f"{free['cpu']:.1f}/{total['cpu']:.1f}", f"{_mem(free['memory'])}/{_mem(total['memory'])}",
            str(n["running"]), ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
        ])
    table(["ID", "TYPE", "ENGINES", "CPU FREE", "MEM FREE", "RUNNING", "LABELS"], rows)
