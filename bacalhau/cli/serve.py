"""`bacalhau serve`: run a node until SIGINT/SIGTERM, then drain and exit 0."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bacalhau.cli.job_limits import job_limit_options, parse_job_limits
from bacalhau.config import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    DEFAULT_BPROTOCOL_MUX,
    DEFAULT_IPFS_SWARM_HOST,
    DEFAULT_IPFS_SWARM_PORT,
    DEFAULT_RETENTION,
    DEFAULT_SWARM_PORT,
)
from bacalhau.errors import UserError
from bacalhau.p2p.addrs import public_ip

if TYPE_CHECKING:
    from bacalhau.config import NodeConfig
    from bacalhau.node import Node, NodeDeps

NODE_TYPES = {"requester", "compute", "requester,compute", "compute,requester"}


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{part!r} is not k=v", param_hint="--labels")
        labels[key] = value
    return labels


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("libp2p", "multiaddr", "hypercorn.error", "docker", "urllib3", "aioquic"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)


def join_instructions(node_id: str, addrs: list[str], swarm_host: str, api_host: str, api_port: int | None,
                      swarm_key: str, api_token: str | None = None, ipfs: dict[str, Any] | None = None) -> str:
    port = next((a.split("/tcp/")[1].split("/")[0] for a in addrs if "/tcp/" in a), "?")
    host = public_ip() if swarm_host in ("0.0.0.0", "") else swarm_host
    maddr = f"/ip4/{host}/tcp/{port}/p2p/{node_id}"
    lines = [f"bacalhau node {node_id} is running."]
    lines += ["To join another machine to this cluster, run on it:",
              f"    bacalhau serve --node-type compute --peer {maddr} --swarm-key {swarm_key}",
              "(the swarm key makes the cluster private: keep it secret; nodes without it cannot connect)"]
    if api_port is not None:
        host = public_ip() if api_host in ("0.0.0.0", "::") else api_host
        token = f" BACALHAU_API_TOKEN={api_token}" if api_token else ""
        lines += ["To use this node from a client:",
                  f"    export BACALHAU_API_HOST={host} BACALHAU_API_PORT={api_port}{token}"]
    if ipfs and ipfs.get("Addresses"):
        # the last address is the one other machines dial when it listens on all interfaces
        lines += [f"The embedded IPFS node is {ipfs['ID']}; a Kubo node peers with it by:",
                  f"    ipfs swarm connect {ipfs['Addresses'][-1]}"]
        if all(a.startswith(("/ip4/127.", "/ip6/::1/")) for a in ipfs["Addresses"]):
            lines += ["(it listens on this machine only: --ipfs-swarm-host 0.0.0.0 opens it to IPFS peers"
                      " elsewhere, which can then fetch this node's pinned content)"]
    return "\n".join(lines)


def parse_ipfs_swarm_addrs(text: str) -> tuple[str, ...]:
    addrs = tuple(a.strip() for a in text.split(",") if a.strip())
    for a in addrs:
        if not a.startswith("/") or "/p2p/" not in a:
            raise click.BadParameter(f"{a!r} must be a multiaddr ending in /p2p/<peer id>",
                                     param_hint="--ipfs-swarm-addrs")
    return addrs


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A duration flag: finite and not negative (click's FloatRange lets NaN through)."""
    if not 0 <= value < float("inf"):
        raise click.BadParameter(f"must be a number of seconds, 0 or more, not {value}")
    return value


@click.command()
@click.option("--node-type", default="requester,compute", show_default=True,
              help="requester, compute or requester,compute.")
@click.option("--peer", "peers", multiple=True, metavar="MULTIADDR",
              help="A node to connect to, /ip4/.../tcp/.../p2p/ID (repeatable; 'none' = alone).")
@click.option("--host", "api_host", default=DEFAULT_API_HOST, show_default=True, help="API listen address.")
@click.option("--port", "api_port", default=DEFAULT_API_PORT, show_default=True, type=int, help="API port.")
@click.option("--swarm-port", default=DEFAULT_SWARM_PORT, show_default=True, type=int, help="libp2p TCP port.")
@click.option("--labels", default="", metavar="K=V,...", help="Labels of this compute node.")
@click.option("--limit-total-cpu", default=None, metavar="CPU", help="CPU this node offers (default 80% of cores).")
@click.option("--limit-total-memory", default=None, metavar="SIZE", help="Memory this node offers (default 80%).")
@click.option("--repo", default=None, type=click.Path(file_okay=False), envvar="BACALHAU_DIR",
              help="State directory (env BACALHAU_DIR, default ~/.bacalhau).")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1), metavar="N",
              help="Attempts a job gets (on different nodes) before it fails, unless its spec says otherwise.")
@click.option("--swarm-key", default=None, metavar="HEX|FILE", envvar="BACALHAU_SWARM_KEY",
              help="The private cluster's key, as printed by its first node (kept in the repo once given).")
@click.option("--ipfs-swarm-port", default=DEFAULT_IPFS_SWARM_PORT, show_default=True, type=int,
              help="TCP port of the embedded IPFS node, which IPFS peers such as Kubo connect to (0: any).")
@click.option("--ipfs-swarm-host", default=DEFAULT_IPFS_SWARM_HOST, show_default=True, metavar="ADDR",
              help="Address the embedded IPFS node listens on. It has no swarm key: 0.0.0.0 lets IPFS peers on "
                   "other machines connect, and fetch the pinned content (added files, job results).")
@click.option("--ipfs-swarm-addrs", default="", metavar="MULTIADDR[,...]",
              help="IPFS nodes (Kubo among them) the embedded IPFS node stays connected to, to fetch what they "
                   "hold and let them fetch what it holds.")
@click.option("--ipfs-connect", default=None, metavar="MULTIADDR",
              help="Use an existing IPFS node through its RPC API (e.g. /ip4/127.0.0.1/tcp/5001) instead of "
                   "the embedded one.")
@click.option("--retention", default=DEFAULT_RETENTION, show_default=True, type=float, callback=_seconds,
              metavar="SECONDS", help="Results of finished jobs and unpinned IPFS blocks older than this are "
                                      "deleted (published results stay pinned); 0 keeps them for ever.")
@job_limit_options
@click.option("--max-result-size", default=None, metavar="SIZE",
              help="A job whose result (its outputs' apparent sizes, stdout and stderr) is larger fails "
                   "unpublished (default 10Gi).")
@click.option("--wasm-memory-limit", default=None, metavar="SIZE",
              help="Memory of a WASM job that asks for none (default 512Mi).")
@click.option("--allow-private-urls", is_flag=True,
              help="Let URL inputs reach loopback, private and link-local addresses (refused by default).")
@click.option("--url-input-timeout", default=None, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Deadline for downloading one URL input (default 600).")
@click.option("--bprotocol-mux/--no-bprotocol-mux", default=DEFAULT_BPROTOCOL_MUX, show_default=True,
              envvar="BACALHAU_BPROTOCOL_MUX",
              help="Calls to a peer share one stream (off: a stream per call, as nodes before the mux).")
@click.option("--amplify/--no-amplify", default=True, show_default=True,
              help="Run the Amplify workflow engine on this requester (bacalhau amplify --help).")
@click.option("--amplify-workflow", default=None, type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="The workflow a run follows when it gives none (default: the shipped one).")
@click.option("--amplify-max-running", default=None, type=click.IntRange(min=1), metavar="N",
              help="Amplify runs at once (default 10).")
@click.option("--amplify-max-waiting", default=None, type=click.IntRange(min=0), metavar="N",
              help="Amplify runs queued behind them; past this a run request is refused (default 100).")
@click.option("--amplify-trigger-label", default="", metavar="KEY[=VALUE]",
              help="A cluster job with this label that completes queues an Amplify run over its outputs.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(node_type: str, peers: tuple[str, ...], api_host: str, api_port: int, swarm_port: int, labels: str,
          limit_total_cpu: str | None, limit_total_memory: str | None, repo: str | None, max_attempts: int | None,
          swarm_key: str | None, ipfs_swarm_port: int, ipfs_swarm_host: str, ipfs_swarm_addrs: str,
          ipfs_connect: str | None, retention: float, max_result_size: str | None,
          wasm_memory_limit: str | None, allow_private_urls: bool, url_input_timeout: float | None,
          bprotocol_mux: bool, amplify: bool, amplify_workflow: str | None, amplify_max_running: int | None,
          amplify_max_waiting: int | None, amplify_trigger_label: str, verbose: bool, **job_limits: Any) -> None:
    """Run a bacalhau node: with no flags, a private cluster of one that is requester and compute.

    It prints the command that joins more machines. SIGINT/SIGTERM stop taking work, give running jobs a
    grace period, persist state and exit 0.
    """
    from bacalhau.config import NodeConfig, default_repo_dir, machine_capacity
    from bacalhau.models import NodeType, Resources

    if node_type.replace(" ", "") not in NODE_TYPES:
        raise click.BadParameter("must be requester, compute or requester,compute", param_hint="--node-type")
    types = tuple(NodeType(t) for t in sorted(set(node_type.replace(" ", "").split(",")), reverse=True))
    peer_list = tuple(p for p in peers if p != "none")
    for p in peer_list:
        if "/p2p/" not in p:
            raise click.BadParameter(f"{p!r} must end in /p2p/<peer id>", param_hint="--peer")
    capacity = None
    if limit_total_cpu or limit_total_memory:
        machine = machine_capacity()
        try:
            capacity = Resources(cpu=limit_total_cpu or machine.cpu, memory=limit_total_memory or machine.memory)
        except ValueError as exc:   # pydantic's ValidationError: its first error's message is the line
            errors = getattr(exc, "errors", None)
            message = errors()[0]["msg"].removeprefix("Value error, ") if errors else str(exc)
            raise click.BadParameter(message, param_hint="--limit-total-*") from None
    config = NodeConfig(
        repo_dir=Path(repo) if repo else default_repo_dir(), node_types=types, api_host=api_host,
        api_port=api_port, swarm_port=swarm_port, peers=peer_list, labels=parse_labels(labels), capacity=capacity,
        swarm_key=swarm_key, ipfs_swarm_port=ipfs_swarm_port, ipfs_swarm_host=ipfs_swarm_host,
        ipfs_swarm_addrs=parse_ipfs_swarm_addrs(ipfs_swarm_addrs), ipfs_connect=ipfs_connect, retention=retention,
        job_limits=parse_job_limits(capacity or machine_capacity(), **job_limits),
    )
    if max_attempts:
        config.max_attempts = max_attempts
    config.allow_private_urls = allow_private_urls
    if url_input_timeout:
        config.url_timeout = url_input_timeout
    config.bprotocol_mux = bprotocol_mux
    config.amplify = amplify
    if amplify_workflow:
        from bacalhau.amplify.workflow import WorkflowError, load_workflow

        try:
            load_workflow(Path(amplify_workflow))
        except WorkflowError as exc:
            raise click.BadParameter(str(exc), param_hint="--amplify-workflow") from None
        config.amplify_workflow = Path(amplify_workflow)
    config.amplify_max_running = amplify_max_running or config.amplify_max_running
    config.amplify_max_waiting = config.amplify_max_waiting if amplify_max_waiting is None else amplify_max_waiting
    config.amplify_trigger_label = amplify_trigger_label.strip()
    for flag, value in (("max_result_size", max_result_size), ("wasm_memory_limit", wasm_memory_limit)):
        if value is not None:
            import dataclasses

            from bacalhau.models.resources import parse_size

            try:
                size = parse_size(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--" + flag.replace("_", "-")) from None
            if flag == "max_result_size":
                config.max_result_size = size
            else:   # what a WASM job that asks no memory gets and is counted as: one of the job limits
                config.job_limits = dataclasses.replace(config.job_limits, wasm_memory=size)
    if not api_host.startswith(("127.", "localhost", "::1")):
        import secrets

        token_file = config.repo_dir / "api.token"
        if not token_file.exists():
            from bacalhau.secret_file import write_secret

            write_secret(token_file, secrets.token_urlsafe(32) + "\n")
        config.api_token = token_file.read_text().strip()
    if ipfs_connect:
        from bacalhau.ipfs.remote import api_url

        try:
            api_url(ipfs_connect)
        except UserError as exc:
            raise click.BadParameter(str(exc), param_hint="--ipfs-connect") from None
    if swarm_key:
        from bacalhau.p2p.swarm_key import parse_swarm_key

        try:
            parse_swarm_key(Path(swarm_key).read_text() if Path(swarm_key).is_file() else swarm_key)
        except UserError as exc:
            raise click.BadParameter(str(exc), param_hint="--swarm-key") from None
    setup_logging(verbose)
    import trio

    trio.run(run_until_signalled, config)


async def run_until_signalled(first_config: NodeConfig, more: Callable[[Node], list[NodeConfig]] | None = None,
                              deps: Callable[[], NodeDeps | None] = lambda: None) -> None:
    """Start the first node, then the nodes `more` derives from it (devstack), each with `deps()`; stop all on
    a signal."""
    import gc

    import trio

    from bacalhau.node import Node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            first = await nursery.start(Node(first_config, deps()).run)
            nodes = [first]
            configs = [first_config, *(more(first) if more else [])]
            for config in configs[1:]:
                nodes.append(await nursery.start(Node(config, deps()).run))
            # what start-up made lives as long as the nodes: full collections skip it (they went through ~145k
            # objects, 250-330 ms each with the loop stopped, 1 s of CPU per 2000 jobs; frozen: 23-38 ms)
            gc.freeze()
            click.echo(join_instructions(first.node_id, first.addrs(), first_config.swarm_host,
                                         first_config.api_host, first.api_port, first.swarm_key,
                                         first_config.api_token,
                                         await first.content.ipfs_identity() if first.ipfs_host else None), err=True)
            async for signum in signals:
                logging.getLogger("bacalhau").info(
                    "%s: stopping (running jobs get %gs to end)", signal.Signals(signum).name, configs[0].shutdown_grace)
                break
            with trio.move_on_after(configs[0].shutdown_grace + 1):
                for node in nodes:
                    await node.drain()
            nursery.cancel_scope.cancel()
