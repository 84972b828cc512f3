"""`bacalhau get JOB_ID`: download a job's results (stdout, stderr, exitCode, outputs/)."""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import status
from bacalhau.cli.untar import extract

PROGRESS_EVERY = 8 * 1024 * 1024


def progress(received: int, size: int | None) -> str:
    if size:
        return f"downloaded {received / 1e6:.0f} of {size / 1e6:.0f} MB ({100 * received // size}%)"
    return f"downloaded {received / 1e6:.0f} MB"


@click.command()
@click.argument("job_id")
@click.option("--output-dir", "-o", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where to put the results (in a folder named after the job).")
@click.pass_context
def get(ctx: click.Context, job_id: str, output_dir: str) -> None:
    """Download the results of a job: stdout, stderr, exitCode and outputs/."""
    client = client_from(ctx)
    job = client.job(job_id)
    dest = Path(output_dir) / f"job-{job['id'][:8]}"
    dest.mkdir(parents=True, exist_ok=True)
    status(f"fetching the results of job {job['id']}")
    size, chunks = client.result_tar(job["id"])
    received, next_report = 0, PROGRESS_EVERY
    with tempfile.TemporaryFile() as tmp:
        for chunk in chunks:
            tmp.write(chunk)
            received += len(chunk)
            if received >= next_report:
                status(progress(received, size))
                next_report += PROGRESS_EVERY
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r") as tar:
            extract(tar, dest)
    status(f"results of job {job['id']} in {dest}")
    click.echo(str(dest), file=sys.stdout)
