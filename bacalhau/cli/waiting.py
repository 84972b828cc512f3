"""Waiting for a job with progress on stderr, then printing its output: shared by `docker run` and `create`."""

from __future__ import annotations

import sys
import time

from bacalhau.cli.output import short, status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bacalhau.cli.client import ApiClient

SMALL_STDERR = 64 * 1024    # bytes: a stderr this small is read whole on the client's kept-alive connection


def _progress_line(job: dict[str, Any]) -> str:
    executions = job.get("executions", [])
    live = [e for e in executions if e["state"] not in ("bid_rejected", "failed", "cancelled", "completed")]
    shown = live[-1] if live else (executions[-1] if executions else None)
    detail = f" ({shown['state'].replace('_', ' ')} on node {short(shown['node_id'])})" if shown else ""
    return f"job {short(job['id'])}: {job['state'].replace('_', ' ')}{detail}"


def submit_and_report(client: ApiClient, spec: dict[str, Any], *, id_only: bool, wait: bool, follow: bool) -> None:
    """What `docker run` and `wasm run` do once they have a spec: submit it, then print the ID, or stream the
    logs (-f), or wait and print the output; exit with the job's exit code."""
    job_id = client.submit(spec)
    if id_only or not wait:
        print(job_id)
        return
    status(f"job {job_id} submitted")
    if follow:
        from bacalhau.cli.logs import follow_logs

        sys.exit(follow_logs(client.host, client.port, job_id, token=client.token))
    sys.exit(wait_and_print(client, job_id))


def wait_and_print(client: ApiClient, job_id: str, *, quiet: bool = False) -> int:
    """Wait for the job to end, showing each change; print its stdout (and stderr); return the exit code."""
    since, last = 0.0, ""
    started = time.monotonic()
    while True:
        job = client.wait(job_id, since)
        since = max([job["updated_at"], *(e["updated_at"] for e in job.get("executions", []))])
        line = _progress_line(job)
        if line != last and not quiet:
            status(f"[{time.monotonic() - started:5.1f}s] {line}")
            last = line
        if job["state"] in ("completed", "failed", "cancelled"):
            break
    return finish(client, job)


def finish(client: ApiClient, job: dict[str, Any]) -> int:
    if job["state"] == "cancelled":
        status(f"job {short(job['id'])} was cancelled: {job['reason']}")
        return 1
    ran = sorted((e for e in job["executions"] if e.get("result")), key=lambda e: e["state"] != "completed")
    if job["state"] == "failed" and not ran:
        status(f"job {short(job['id'])} could not run: {job['reason']}")
        return 1
    result = ran[0]["result"] if ran else {"exit_code": 1}
    whole = _whole_stdout(ran)
    out = sys.stdout.buffer
    for chunk in [whole] if whole is not None else client.result(job["id"], "stdout"):
        out.write(chunk)
    out.flush()
    err = sys.stderr.buffer
    if whole is not None and result.get("stderr_bytes", 0) <= SMALL_STDERR and not result.get("stderr_truncated"):
        # (read all the same: a note on what publishing skipped is added after the result is counted)
        err.write(client.small_result(job["id"], "stderr"))
    else:
        for chunk in client.result(job["id"], "stderr"):
            err.write(chunk)
    err.flush()
    if job["state"] == "failed":
        status(f"job {short(job['id'])} failed: {job['reason']}")
        return int(result["exit_code"]) or 1
    return int(result["exit_code"])


def _whole_stdout(ran: list[dict[str, Any]]) -> bytes | None:
    """The job's stdout when the one result's tail (its last KiB, decoded) is all of it, byte for byte: the
    result requests (http.client's import, a read of the published result) were ~40 ms of a short
    `docker run`. None where the tail may not be exact (a U+FFFD could stand for undecodable bytes)."""
    if len(ran) != 1:
        return None
    result = ran[0]["result"]
    tail = result.get("stdout_tail")
    if not isinstance(tail, str) or "\ufffd" in tail or result.get("stdout_truncated"):
        return None
    data = tail.encode()
    return data if len(data) == result.get("stdout_bytes") else None
