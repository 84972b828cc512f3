"""The click group of `bacalhau`: its verbs live one per module, imported only when used (no py-libp2p, no
server stack for a client command). `main.py` runs it, after the plain forms of `list` and `describe`, which
start without click (fast.py)."""

from __future__ import annotations

import importlib

import click

from bacalhau.cli.main import COMMANDS, HELP
from bacalhau.version import VERSION


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
