"""The `bacalhau` command. The plain forms of the commands typed most (`list`, `describe`) run without
importing click (fast.py: a client command's start was mostly click's imports); everything else, `--help`
included, goes through the click group (group.py), whose verbs are imported only when used."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click


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
