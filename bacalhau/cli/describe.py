"""`bacalhau describe JOB_ID`: spec, state, executions and events of a job."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import emit, output_option, short, table
from bacalhau.errors import BacalhauError

if TYPE_CHECKING:
    from bacalhau.cli.client import ApiClient

STDOUT_SHOWN = 4096    # bytes of the result's stdout the table shows (all of it: `bacalhau get`)


def stdout_head(client: ApiClient, job_id: str) -> str:
    """The start of the job's stdout, from the API's results route (IPFS first, else the compute node that ran
    it: the choice is the API's), or why it cannot be shown."""
    head = b""
    try:
        for chunk in client.result(job_id, "stdout"):
            head += chunk
            if len(head) > STDOUT_SHOWN:
                return head[:STDOUT_SHOWN].decode(errors="replace") + f"\n... (more: bacalhau get {job_id[:8]})"
    except BacalhauError as exc:
        return f"(not available: {exc})"
    return head.decode(errors="replace")


@click.command()
@click.argument("job_id")
@output_option(default="yaml")
@click.pass_context
def describe(ctx: click.Context, job_id: str, output: str) -> None:
    """Show a job (a unique prefix of its ID is enough). The YAML can be fed back to `create`.

    Env values show as *** unless this client submitted the job. The table shows the start of its stdout."""
    client = client_from(ctx)
    job = client.job(job_id, as_owner=True)   # env values in clear for the job's submitter only
    if output != "table":
        emit(job, output)
        return
    click.echo(f"Job:    {job['id']}\nState:  {job['state']}" + (f" ({job['reason']})" if job["reason"] else ""))
    spec = job["spec"]
    engine = spec["engine"]
    detail = spec.get(engine) or {}
    if engine == "docker":
        click.echo(f"Docker: {detail['image']} {' '.join(detail.get('parameters', []))}")
    click.echo("\nExecutions:")
    table(["ID", "NODE", "STATE", "EXIT", "REASON"], [
        [e["id"][:8], short(e["node_id"]), e["state"], str((e.get("result") or {}).get("exit_code", "")),
         e["reason"][:70]] for e in job["executions"]
    ])
    if any(e.get("result") for e in job["executions"]):
        click.echo("\nStdout:\n" + stdout_head(client, job["id"]).rstrip("\n"))
    click.echo("\nEvents:")
    table(["TIME", "WHAT", "STATE", "REASON"], [
        [time.strftime("%H:%M:%S", time.localtime(ev["time"])) + f".{int(ev['time'] * 1000) % 1000:03d}",
         f"{ev['kind']} {ev['subject'][:8]}", ev["state"], ev["reason"][:70]] for ev in job["events"]
    ])
