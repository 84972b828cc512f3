"""`bacalhau list`: jobs, newest first (printed by views.py; its plain forms run without click: fast.py)."""

from __future__ import annotations

import click

from bacalhau.cli import views
from bacalhau.cli.main import client_from
from bacalhau.cli.output import output_option


@click.command("list")
@click.option("-n", "--number", default=10, show_default=True, type=click.IntRange(min=1), help="How many jobs.")
@click.option("--all", "all_", is_flag=True, help="All jobs (overrides -n).")
@click.option("--wide", is_flag=True, help="Full job IDs.")
@output_option()
@click.pass_context
def list_jobs(ctx: click.Context, number: int, all_: bool, wide: bool, output: str) -> None:
    """List jobs, newest first."""
    views.list_jobs(client_from(ctx), number, all_, wide, output)
