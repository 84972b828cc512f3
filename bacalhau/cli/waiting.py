"""Waiting for a job with progress on stderr, then printing its output: shared by `docker run` and `create`."""

from __future__ import annotations

import atexit
import gc
import sys
import time

from bacalhau.cli.output import exit_status, short, status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bacalhau.cli.client import ApiClient

SMALL_STDERR = 64 * 1024    # bytes: a stderr this small is read whole on the client's kept-alive connection
_exit_frozen = False


def _progress_line(job: dict[str, Any]) -> str:
    executions = job.get("executions", [])
    live = [e for e in executions if e["state"] not in ("bid_rejected", "failed", "cancelled", "completed")]
    shown = live[-1] if live else (executions[-1] if executions else None)
    detail = f" ({shown['state'].replace('_', ' ')} on node {short(shown['node_id'])})" if shown else ""
    return f"job {short(job['id'])}: {job['state'].replace('_', ' ')}{detail}"


def submit_and_report(client: ApiClient, spec: dict[str, Any], *, id_only: bool, wait: bool, follow: bool) -> None:
    """What `docker run` and `wasm run` do once they have a spec: submit it, then print the ID, or stream the
    logs (-f), or wait and print the output; exit with the job's exit code."""
    exit_uncollected()
    job_id = client.submit(spec)
    if id_only or not wait:
        print(job_id)
        return
    status(f"job {job_id} submitted")
    if follow:
        from bacalhau.cli.logs import follow_logs

        sys.exit(follow_logs(client.host, client.port, job_id, token=client.token))
    sys.exit(wait_and_print(client, job_id))


def exit_uncollected() -> None:
    """Let the process end without the cyclic collector's work on what it imported: Python's finalization
    collects once the modules are cleared, walking and freeing every object left in a cycle (~9000: classes,
    functions, their modules' dicts). A `docker run`'s last answer to its exit took 8.5 ms, now 2.3 (medians of
    15, same run), its CPU 8-15 ms less. Modules are still torn down and the std streams flushed; objects in
    cycles are left to the process's end. What was made so far lives to the exit anyway: the collector's passes
    while it waits skip it too."""
    global _exit_frozen
    gc.freeze()
    if not _exit_frozen:
        atexit.register(gc.freeze)
        _exit_frozen = True


def wait_and_print(client: ApiClient, job_id: str, *, quiet: bool = False) -> int:
    """Wait for the job to end, showing each change; print its stdout (and stderr); return the exit code."""
    exit_uncollected()
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
    whole = _whole_tail(ran, "stdout")
    out = sys.stdout.buffer
    for chunk in [whole] if whole is not None else client.result(job["id"], "stdout"):
        out.write(chunk)
    out.flush()
    err = sys.stderr.buffer
    whole_err = _whole_tail(ran, "stderr")
    if whole is not None and job["state"] == "completed" and _stderr_empty(result):
        pass    # the result request (~4 ms, a tenth of what follows the job's end) is for nothing
    elif whole is not None and whole_err:
        err.write(whole_err)    # all of it in the result, the node's notes too (counted: docker.py)
    elif whole is not None and result.get("stderr_bytes", 0) <= SMALL_STDERR and not result.get("stderr_truncated"):
        err.write(client.small_result(job["id"], "stderr"))
    else:
        for chunk in client.result(job["id"], "stderr"):
            err.write(chunk)
    err.flush()
    if job["state"] == "failed":
        status(f"job {short(job['id'])} failed: {job['reason']}")
        return exit_status(result["exit_code"]) or 1
    return exit_status(result["exit_code"])


def _stderr_empty(result: dict[str, Any]) -> bool:
    """The result says its stderr is empty, and a node's own notes would be in it: what publishing skips is
    counted in stderr_bytes (compute/node.py), as are the limits a container met (executors/docker.py). A node
    from before that counted them noted limits only on a run that failed or was truncated (not taken here); on
    such a node a run whose outputs publishing skipped has the note in its published stderr alone."""
    return result.get("stderr_bytes") == 0 and result.get("exit_code") == 0 and not result.get("stderr_truncated") \
        and not result.get("error")


def _whole_tail(ran: list[dict[str, Any]], stream: str) -> bytes | None:
    """The job's stdout (stderr) when the one result's tail (its last KiB, decoded) is all of it, byte for
    byte: the result requests (http.client's import, a read of the published result) were ~40 ms of a short
    `docker run`. None where the tail may not be exact (a U+FFFD could stand for undecodable bytes; a note the
    node added after the tail was read is counted in the size, not in the tail)."""
    if len(ran) != 1:
        return None
    result = ran[0]["result"]
    tail = result.get(f"{stream}_tail")
    if not isinstance(tail, str) or "\ufffd" in tail or result.get(f"{stream}_truncated"):
        return None
    data = tail.encode()
    return data if len(data) == result.get(f"{stream}_bytes") else None
