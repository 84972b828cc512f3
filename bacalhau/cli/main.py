"""The `bacalhau` command. The plain forms of the commands typed most (`list`, `describe`) run without
importing click (fast.py: a client command's start was mostly click's imports); everything else, `--help`
included, goes through the click group (group.py), whose verbs are imported only when used."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

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


def main() -> None:
    from bacalhau.errors import BacalhauError

    try:
        from bacalhau.cli.fast import run_plain

        if run_plain(sys.argv[1:]):
            return
        _run_click()
    except BacalhauError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # stdout closed early (`bacalhau list | head -1`): quiet, as click does (the exit's flush goes nowhere)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _run_click() -> None:
    import click

    from bacalhau.cli.group import cli
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


def __getattr__(name: str) -> Any:
    if name == "cli":    # the group, where it was defined before (imported when asked for)
        from bacalhau.cli.group import cli

        return cli
    raise AttributeError(name)


if __name__ == "__main__":
    main()
