"""`bacalhau list`: jobs, newest first."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import ago, emit, output_option, table


@click.command("list")
@click.option("-n", "--number", default=10, show_default=True, type=click.IntRange(min=1), help="How many jobs.")
@click.option("--all", "all_", is_flag=True, help="All jobs (overrides -n).")
@click.option("--wide", is_flag=True, help="Full job IDs.")
@output_option()
@click.pass_context
def list_jobs(ctx: click.Context, number: int, all_: bool, wide: bool, output: str) -> None:
    """List jobs, newest first."""
    jobs = client_from(ctx).list_jobs(0 if all_ else number)
    if output != "table":
        emit(jobs, output)
        return
    rows = [[j["id"] if wide else j["id"][:8], ago(j["created_at"]), j["engine"], j["state"],
             (j["reason"] or "")[:60]] for j in jobs]
    table(["ID", "CREATED", "ENGINE", "STATE", "REASON"], rows)
