"""The `bacalhau` command. Verbs live one per module and are imported only when used, so client commands
start fast (no py-libp2p, no server stack)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from bacalhau.version import VERSION

COMMANDS = {
    "serve": "bacalhau.cli.serve:serve",
    "amplify": "bacalhau.cli.amplify:amplify",
    "devstack": "bacalhau.cli.devstack:devstack",
    "docker": "bacalhau.cli.docker_run:docker",
    "wasm": "bacalhau.cli.wasm_run:wasm",
    "create": "bacalhau.cli.create:create",
    "validate": "bacalhau.cli.create:validate",
    "list": "bacalhau.cli.list_jobs:list_jobs",
    "describe": "bacalhau.cli.describe:describe",
    "cancel": "bacalhau.cli.cancel:cancel",
    "get": "bacalhau.cli.get:get",
    "logs": "bacalhau.cli.logs:logs",
    "node": "bacalhau.cli.node:node",
    "version": "bacalhau.cli.version:version",
    "id": "bacalhau.cli.id:id_",
    "ipfs": "bacalhau.cli.ipfs:ipfs",
    "dashboard": "bacalhau.cli.dashboard:dashboard",
}
HELP = {
    "serve": "Run a node (requester and compute by default).",
    "amplify": "Workflows of jobs over a CID: run, list, describe, cancel, lineage, validate.",
    "devstack": "Run a cluster of N nodes on this machine, for trying things out.",
    "docker": "Run Docker jobs.",
    "wasm": "Run WebAssembly (WASI) jobs.",
    "create": "Submit a job spec from a YAML or JSON file.",
    "validate": "Check a job spec file without submitting it.",
    "list": "List jobs, newest first.",
    "describe": "Show a job's spec, state, executions and events.",
    "cancel": "Cancel a job.",
    "get": "Download a job's results.",
    "logs": "Print a job's logs; -f follows them live.",
    "node": "Look at the cluster's nodes.",
    "version": "Print the client's and the node's versions.",
    "id": "Print the node's peer ID and addresses.",
    "ipfs": "Content addressing: `ipfs add` with Kubo's CIDs.",
    "dashboard": "Print (or --open) the URL of the node's live dashboard.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "BACALHAU"})
@click.option("--api-host", default=None, metavar="HOST",
              help="Requester API host (env BACALHAU_API_HOST, then config file, then 127.0.0.1).")
@click.option("--api-port", default=None, type=int, metavar="PORT",
              help="Requester API port (env BACALHAU_API_PORT, then config file, then 1234).")
@click.version_option(VERSION, prog_name="bacalhau")
@click.pass_context
def cli(ctx: click.Context, api_host: str | None, api_port: int | None) -> None:
    """bacalhau: run Docker and WASM jobs on a peer-to-peer network of compute nodes.

    \b
    Start a node:        bacalhau serve
    Run a job:           bacalhau docker run bacalhau/busybox -- echo hello
    See what happened:   bacalhau list; bacalhau describe JOB_ID; bacalhau get JOB_ID
    """
    ctx.obj = {"api_host": api_host, "api_port": api_port}


def main() -> None:
    from bacalhau.errors import BacalhauError, first_leaf

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BacalhauError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseExceptionGroup as group:
        # a daemon that cannot start (an external IPFS node not answering, a port taken) fails inside its
        # nurseries: its first error is the one line the user needs
        first = first_leaf(group)
        if isinstance(first, BacalhauError | OSError):
            click.echo(f"Error: {first}", err=True)
            sys.exit(1)
        raise


def client_from(ctx: click.Context) -> Any:
    from bacalhau.cli.client import ApiClient, resolve_api

    root = ctx.find_root().obj or {}
    host, port = resolve_api(root.get("api_host"), root.get("api_port"))
    return ApiClient(host, port)


if __name__ == "__main__":
    main()
