"""`bacalhau cancel JOB_ID`."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import status


@click.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job that has not ended; its running executions are killed."""
    job = client_from(ctx).cancel(job_id)
    status(f"job {job['id']} cancelled")
