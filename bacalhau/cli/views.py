"""What `bacalhau list` and `bacalhau describe` print, shared by their click commands and by their plain forms
that start without click (fast.py)."""

from __future__ import annotations

import time

from bacalhau.cli.output import ago, echo, emit, printable, short, table
from bacalhau.errors import BacalhauError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bacalhau.cli.client import ApiClient

STDOUT_SHOWN = 4096    # bytes of the result's stdout the table shows (all of it: `bacalhau get`)


def list_jobs(client: ApiClient, number: int, all_: bool, wide: bool, output: str) -> None:
    jobs = client.list_jobs(0 if all_ else number)
    if output != "table":
        emit(jobs, output)
        return
    rows = [[j["id"] if wide else j["id"][:8], ago(j["created_at"]), j["engine"], j["state"],
             (j["reason"] or "")[:60]] for j in jobs]
    table(["ID", "CREATED", "ENGINE", "STATE", "REASON"], rows)


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


def describe(client: ApiClient, job_id: str, output: str) -> None:
    job = client.job(job_id, as_owner=True)   # env values in clear for the job's submitter only
    if output != "table":
        emit(job, output)
        return
    echo(f"Job:    {job['id']}\nState:  {job['state']}" + (f" ({printable(job['reason'])})" if job["reason"] else ""))
    spec = job["spec"]
    engine = spec["engine"]
    detail = spec.get(engine) or {}
    if engine == "docker":
        echo(printable(f"Docker: {detail['image']} {' '.join(detail.get('parameters', []))}"))
    echo("\nExecutions:")
    table(["ID", "NODE", "STATE", "EXIT", "REASON"], [
        [e["id"][:8], short(e["node_id"]), e["state"], str((e.get("result") or {}).get("exit_code", "")),
         e["reason"][:70]] for e in job["executions"]
    ])
    if any(e.get("result") for e in job["executions"]):
        echo("\nStdout:\n" + printable(stdout_head(client, job["id"]).rstrip("\n"), keep="\n\t"))
    for e in job["executions"]:      # a failed job's error is most often here (each attempt's, its last KiB)
        tail = (e.get("result") or {}).get("stderr_tail")
        if tail:
            echo(f"\nStderr of execution {e['id'][:8]} (its end; all of it: bacalhau get {job['id'][:8]}):\n"
                 + printable(tail.rstrip("\n"), keep="\n\t"))
    echo("\nEvents:")
    table(["TIME", "WHAT", "STATE", "REASON"], [
        [time.strftime("%H:%M:%S", time.localtime(ev["time"])) + f".{int(ev['time'] * 1000) % 1000:03d}",
         f"{ev['kind']} {ev['subject'][:8]}", ev["state"], ev["reason"][:70]] for ev in job["events"]
    ])
