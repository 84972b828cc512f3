"""`bacalhau logs [-f] JOB_ID`: a job's stdout and stderr, live, from whichever node runs it.

Each frame carries its byte offset, so when the connection drops the client reconnects and resumes where it
stopped: nothing lost, nothing twice.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlencode

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import exit_status, short, status
from bacalhau.errors import ApiError, DaemonNotRunning, UserError
from bacalhau.log_frames import STDERR, STDOUT, Data, Ended, Retried, Switched, from_message

RECONNECT_DELAY = 0.5
RECONNECT_GIVE_UP = 30.0
FOLLOWERS_CAPPED = 1013          # api/logs.py closes a follower over its caps with this code and the reason


def follow_logs(host: str, port: int, job_id: str, *, follow: bool = True, quiet: bool = False,
                token: str = "") -> int:
    """Print the job's logs; with follow, until the job ends. Return the job's exit code (1 if it never ran)."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    outs = {STDOUT: sys.stdout.buffer, STDERR: sys.stderr.buffer}
    execution_id, offsets = "", {STDOUT: 0, STDERR: 0}
    failing_since: float | None = None
    while True:
        query = {"follow": "1" if follow else "0", "execution_id": execution_id,
                 "stdout_offset": offsets[STDOUT], "stderr_offset": offsets[STDERR], **({"token": token} if token else {})}
        where = f"[{host}]" if ":" in host else host   # an IPv6 address, as the Host header wants it
        url = f"ws://{where}:{port}/api/v1/jobs/{job_id}/logs?{urlencode(query)}"
        try:
            with connect(url, max_size=4 * 1024 * 1024, open_timeout=10) as ws:
                failing_since = None
                for message in ws:
                    event = from_message(message)
                    if isinstance(event, Data):
                        if event.offset + len(event.data) <= offsets[event.kind]:
                            continue
                        data = event.data[max(0, offsets[event.kind] - event.offset):]
                        outs[event.kind].write(data)
                        outs[event.kind].flush()
                        offsets[event.kind] += len(data)
                    elif isinstance(event, Switched):
                        if event.execution_id != execution_id:
                            execution_id, offsets = event.execution_id, {STDOUT: 0, STDERR: 0}
                        if not quiet:
                            status(f"[logs of execution {short(execution_id)} on node {short(event.node_id)}]")
                    elif isinstance(event, Retried):
                        status(f"[execution {short(event.execution_id)} failed: {event.reason}; "
                               "the job is retried on another node]")
                    else:
                        return _verdict(event, follow)
        except ValueError as exc:
            raise ApiError(f"the API sent something that is not a log message ({exc})") from None
        except (ConnectionClosed, OSError, InvalidHandshake) as exc:
            if isinstance(exc, InvalidStatus) and exc.response.status_code == 404:
                raise ApiError(f"no job {job_id!r}") from None
            if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                raise UserError(f"the API refused the log stream ({exc.response.status_code}): check "
                                "BACALHAU_API_HOST and BACALHAU_API_TOKEN") from None
            if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == FOLLOWERS_CAPPED:
                raise UserError(exc.rcvd.reason) from None   # too many followers: say so, do not retry
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > RECONNECT_GIVE_UP:
                raise DaemonNotRunning(f"lost the log stream from {host}:{port} and could not reconnect "
                                       f"for {RECONNECT_GIVE_UP:g}s: {exc}") from None
            time.sleep(RECONNECT_DELAY)


def _verdict(end: Ended, follow: bool) -> int:
    state, code, reason = end.state, end.exit_code, end.reason
    if state == "error":
        raise ApiError(reason)
    if not follow:
        return 0
    if state == "completed":
        return exit_status(code or 0)
    if state in ("failed", "cancelled"):
        status(f"job {state}: {reason}" if reason else f"job {state}")
        return exit_status(code) if code else 1
    return exit_status(code or 0)


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True,
              help="Replay from the start, then follow until the job ends; exit with the job's exit code.")
@click.pass_context
def logs(ctx: click.Context, job_id: str, follow: bool) -> None:
    """Print what JOB_ID has written so far (stdout to stdout, stderr to stderr); -f follows it live."""
    client = client_from(ctx)
    sys.exit(follow_logs(client.host, client.port, job_id, follow=follow, token=client.token))
