"""A job's logs as the requester reads them: it picks the execution to show, opens that execution's log stream
on whichever node runs it (libp2p), and when the execution fails waits for the retry and goes on with the next
one. What it yields are the events of log_frames.py; the API only bridges them to a websocket.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing

import trio

from bacalhau.bprotocol.framing import encode
from bacalhau.bprotocol.transport import Transport
from bacalhau.compute.logs import LOG_PROTOCOL, LogRequest
from bacalhau.errors import BacalhauError, NotFoundError
from bacalhau.log_frames import (
    END,
    STDERR,
    STDOUT,
    Data,
    Ended,
    FrameReader,
    LogEvent,
    Retried,
    Switched,
    parse_end,
)
from bacalhau.models import Execution, ExecutionState, Job
from bacalhau.requester.store import JobStore

log = logging.getLogger(__name__)
S = ExecutionState
ACTIVE = (S.BID_ACCEPTED, S.RUNNING, S.PUBLISHING)
RAN = ("running", "publishing", "completed")   # an execution's end state when it ran (its log is whole)
QUEUED_WAIT = 5.0      # seconds between looks at a job no node has taken yet (a change wakes it earlier)
RETRY_WAIT = 2.0       # ... at a job whose execution failed, until the requester retries it or gives up


def pick(job: Job, execution_id: str) -> Execution | None:
    """The execution a follower should see: the one it follows while that one still counts, else a completed
    one, else the newest accepted one."""
    mine = next((e for e in job.executions if e.id == execution_id), None)
    if mine is not None and (mine.state in (S.COMPLETED, *ACTIVE) or job.state.terminal):
        return mine
    done = [e for e in job.executions if e.state == S.COMPLETED]
    if done:
        return done[0]
    live = [e for e in job.executions if e.state in ACTIVE]
    return live[-1] if live else None


def _exit_code(job: Job) -> int | None:
    ran = sorted((e for e in job.executions if e.result is not None), key=lambda e: e.state != S.COMPLETED)
    return ran[0].result.exit_code if ran and ran[0].result else None


def _end(job: Job) -> Ended:
    return Ended(job.state.value if job.state.terminal else "running", _exit_code(job), job.reason)


class LogReader:
    def __init__(self, store: JobStore, transport: Transport, call_timeout: float,
                 wait_for_change: Callable[[str, float], Awaitable[None]]) -> None:
        self._store = store
        self._transport = transport
        self._call_timeout = call_timeout
        self._wait_for_change = wait_for_change

    async def read(self, job_id: str, *, execution_id: str = "", stdout_offset: int = 0, stderr_offset: int = 0,
                   follow: bool = True) -> AsyncGenerator[LogEvent, None]:
        """The job's log events (`job_id` may be a prefix), from `execution_id` at the offsets the caller
        has of it, ending with one `Ended`. NotFoundError (before any event) when there is no such job."""
        job_id = await self._store.resolve_id(job_id)
        offsets = {STDOUT: stdout_offset, STDERR: stderr_offset}
        announced = ""
        while True:
            job = await self._store.get_job(job_id, full=False)
            ex = pick(job, execution_id)
            if ex is None:
                if job.state.terminal or not follow:
                    yield _end(job)
                    return
                await self._wait_for_change(job_id, QUEUED_WAIT)   # queued: no execution accepted yet
                continue
            if ex.id != execution_id:
                if execution_id:
                    failed = next((e for e in job.executions if e.id == execution_id), None)
                    yield Retried(execution_id, failed.reason if failed else "execution replaced")
                execution_id, offsets = ex.id, {STDOUT: 0, STDERR: 0}
            if announced != ex.id:
                yield Switched(ex.id, ex.node_id)
                announced = ex.id
            end: Ended | None = None
            async with aclosing(self._stream(ex, offsets, follow)) as frames:
                async for event in frames:
                    if isinstance(event, Ended):
                        end = event
                    else:
                        yield event
            if end is None and ex.state == S.COMPLETED:
                # its node alone holds the job's output: an end without it would pass for an empty log
                yield Ended("error", None, f"cannot read the logs of execution {ex.id} from node {ex.node_id}, the "
                                           "only one that holds them (it may be unreachable now): try again later")
                return
            job = await self._store.get_job(job_id, full=False)
            ran = end is not None and end.state in RAN
            if ran and follow:
                # it ran: the job's verdict (publishing, other executions) comes before the end
                while not job.state.terminal:
                    await self._wait_for_change(job_id, QUEUED_WAIT)
                    job = await self._store.get_job(job_id, full=False)
            if ran or job.state.terminal or not follow:
                yield _end(job)
                return
            # the execution failed or its node went away: wait for the requester to retry (or give up)
            await self._wait_for_change(job_id, RETRY_WAIT)

    async def _stream(self, ex: Execution, offsets: dict[int, int], follow: bool) -> AsyncGenerator[Data | Ended, None]:
        """The node's frames for `ex` past `offsets` (kept up to date), then its end; nothing more if the stream
        broke. No cancel scope is held across a yield (the deadline covers the opening alone)."""
        req = LogRequest(execution_id=ex.id, stdout_offset=offsets[STDOUT], stderr_offset=offsets[STDERR],
                         follow=follow)
        reader = FrameReader()
        try:
            async with AsyncExitStack() as stack:
                with trio.fail_after(self._call_timeout):   # a node cut off never answers the opening
                    chunks = await stack.enter_async_context(
                        self._transport.stream(ex.node_id, LOG_PROTOCOL, encode(req)))
                async for chunk in chunks:
                    for kind, offset, data in reader.feed(chunk):
                        if kind == END:
                            yield parse_end(data)
                            return
                        # skip what the caller already has (a resumed stream starts at its offsets)
                        if offset + len(data) <= offsets[kind]:
                            continue
                        if offset < offsets[kind]:
                            data, offset = data[offsets[kind] - offset:], offsets[kind]
                        offsets[kind] = offset + len(data)
                        yield Data(kind, offset, data)
        except NotFoundError:
            return
        except (BacalhauError, ValueError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("log stream of execution %s from %s broke: %s", ex.id, ex.node_id, exc)
