"""`bacalhau devstack`: N nodes on this machine's loopback, in one process, for trying a cluster out."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bacalhau.config import DEFAULT_API_PORT

if TYPE_CHECKING:
    from bacalhau.node import Node


@click.command()
@click.option("-n", "--nodes", "count", default=3, show_default=True, type=click.IntRange(1, 20),
              help="How many nodes: the first is requester and compute, the others compute.")
@click.option("--port", "api_port", default=DEFAULT_API_PORT, show_default=True, type=int, help="API port.")
@click.option("--repo", default=None, type=click.Path(file_okay=False),
              help="Where the nodes keep state (default: a new temporary directory).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def devstack(count: int, api_port: int, repo: str | None, verbose: bool) -> None:
    """Run COUNT nodes on 127.0.0.1, in one process; Ctrl-C stops them all."""
    import trio

    from bacalhau.bprotocol.transport import InProcessPeers
    from bacalhau.cli.serve import run_until_signalled, setup_logging
    from bacalhau.config import NodeConfig
    from bacalhau.models import NodeType
    from bacalhau.node import NodeDeps

    setup_logging(verbose)
    root = Path(repo) if repo else Path(tempfile.mkdtemp(prefix="bacalhau-devstack-"))
    click.echo(f"devstack state in {root}", err=True)

    first = NodeConfig(repo_dir=root / "node-0", api_port=api_port, swarm_host="127.0.0.1", swarm_port=0,
                       ipfs_swarm_port=0, labels={"devstack": "0"})

    def others(node0: Node) -> list[NodeConfig]:
        peer = node0.addrs()[0]
        return [
            NodeConfig(repo_dir=root / f"node-{i}", node_types=(NodeType.COMPUTE,), serve_api=False,
                       swarm_host="127.0.0.1", swarm_port=0, ipfs_swarm_port=0, peers=(peer,), labels={"devstack": str(i)},
                       swarm_key=node0.swarm_key)
            for i in range(1, count)
        ]

    # the nodes call each other's bprotocol handlers and hear each other's NodeInfo in-process, not through
    # per-message crypto over loopback: what grew with the node count (issue 15); libp2p carries the rest
    neighbours = InProcessPeers()
    trio.run(run_until_signalled, first, others, lambda: NodeDeps(neighbours=neighbours))
