"""`bacalhau describe JOB_ID`: spec, state, executions and events of a job (printed by views.py; its plain
forms run without click: fast.py)."""

from __future__ import annotations

import click

from bacalhau.cli import views
from bacalhau.cli.main import client_from
from bacalhau.cli.output import output_option


@click.command()
@click.argument("job_id")
@output_option(default="yaml")
@click.pass_context
def describe(ctx: click.Context, job_id: str, output: str) -> None:
    """Show a job (a unique prefix of its ID is enough). The YAML can be fed back to `create`.

    Env values show as *** unless this client submitted the job. The table shows the start of its stdout."""
    views.describe(client_from(ctx), job_id, output)
