"""The job log websocket: the requester follows the job's current execution on whichever node runs it and
muxes that node's log stream onto the client's websocket.

    GET /api/v1/jobs/{id}/logs?follow=1[&execution_id=E&stdout_offset=N&stderr_offset=M]   (websocket)

Binary messages are log frames exactly as compute nodes send them (kind, byte offset, data; see
compute/logs.py). Text messages are JSON events:
    {"type": "execution", "execution_id", "node_id"}   frames that follow belong to this execution
    {"type": "retry", "execution_id", "reason"}        that execution failed; the job goes on elsewhere
    {"type": "end", "state", "exit_code", "reason"}    nothing more will come
A client that lost its connection reconnects with the execution id and the offsets it has.

Followers are capped in total and per client address (MAX_FOLLOWERS, MAX_FOLLOWERS_PER_CLIENT): one over is
accepted and closed at once with code 1013 (try again later) and the reason. A follower that stops reading
is dropped when a write to it stays blocked for SEND_TIMEOUT (api/server.py), not held without end.
"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from bacalhau.bprotocol.framing import encode
from bacalhau.compute.logs import END, LOG_PROTOCOL, STDERR, STDOUT, FrameReader, LogRequest, frame
from bacalhau.errors import BacalhauError, NotFoundError
from bacalhau.models import Execution, ExecutionState, Job

if TYPE_CHECKING:
    from bacalhau.node import Node

log = logging.getLogger(__name__)
S = ExecutionState
CLIENT_CLOSE_GRACE = 5.0
MAX_FOLLOWERS = 256              # log websockets open at once on this API
MAX_FOLLOWERS_PER_CLIENT = 32    # ... from one client address
TRY_AGAIN_LATER = 1013


class Followers:
    """The log websockets open now, in total and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.by_client: dict[str, int] = {}

    def refusal(self, client: str) -> str | None:
        if self.total >= MAX_FOLLOWERS:
            return f"this node serves {MAX_FOLLOWERS} log followers already: try again later"
        if self.by_client.get(client, 0) >= MAX_FOLLOWERS_PER_CLIENT:
            return f"{MAX_FOLLOWERS_PER_CLIENT} log followers from {client} already: close some first"
        return None

    def add(self, client: str, n: int) -> None:
        self.total += n
        self.by_client[client] = self.by_client.get(client, 0) + n
        if not self.by_client[client]:
            del self.by_client[client]
ACTIVE = (S.BID_ACCEPTED, S.RUNNING, S.PUBLISHING)
RAN = ("running", "publishing", "completed")


def _pick(job: Job, execution_id: str) -> Execution | None:
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


async def job_logs(node: Node, websocket: WebSocket, followers: Followers) -> None:
    client = websocket.client.host if websocket.client else ""
    await websocket.accept()
    refusal = followers.refusal(client)
    if refusal is not None:
        await websocket.close(TRY_AGAIN_LATER, refusal)
        return
    followers.add(client, 1)   # no await since the check: concurrent handshakes cannot all slip under the cap
    try:
        await _serve_follower(node, websocket)
    finally:
        followers.add(client, -1)


async def _serve_follower(node: Node, websocket: WebSocket) -> None:
    requester = node.requester
    assert requester is not None
    params = websocket.query_params
    follow = params.get("follow", "1") not in ("0", "false")
    try:
        job_id = await requester.store.resolve_id(websocket.path_params["job_id"])
        execution_id = params.get("execution_id", "")
        offsets = {STDOUT: int(params.get("stdout_offset", "0")), STDERR: int(params.get("stderr_offset", "0"))}
    except (BacalhauError, ValueError) as exc:
        await websocket.send_text(json.dumps({"type": "end", "state": "error", "exit_code": None, "reason": str(exc)}))
        await websocket.close()
        return
    gone = trio.Event()   # the client went away: stop following at once, on every hop

    async def watch(cancel: trio.CancelScope) -> None:
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            gone.set()
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        await _follow(node, websocket, job_id, execution_id, offsets, follow, gone)
        nursery.cancel_scope.cancel()


async def _follow(node: Node, websocket: WebSocket, job_id: str, execution_id: str, offsets: dict[int, int],
                  follow: bool, gone: trio.Event) -> None:
    requester = node.requester
    assert requester is not None
    announced = ""
    try:
        while True:
            job = await requester.store.get_job(job_id, full=False)
            ex = _pick(job, execution_id)
            if ex is None:
                if job.state.terminal or not follow:
                    return await _send_end(websocket, job, gone)
                await requester.wait_for_change(job_id, 5.0)  # queued: no execution accepted yet
                continue
            if ex.id != execution_id:
                if execution_id:
                    failed = next((e for e in job.executions if e.id == execution_id), None)
                    await websocket.send_text(json.dumps({"type": "retry", "execution_id": execution_id,
                                                          "reason": failed.reason if failed else "execution replaced"}))
                execution_id, offsets = ex.id, {STDOUT: 0, STDERR: 0}
            if announced != ex.id:
                await websocket.send_text(json.dumps({"type": "execution", "execution_id": ex.id,
                                                      "node_id": ex.node_id}))
                announced = ex.id
            end = await _forward(node, websocket, ex, offsets, follow)
            if end is None and ex.state == S.COMPLETED:
                # its node alone holds the job's output: an end without it would pass for an empty log
                reason = (f"cannot read the logs of execution {ex.id} from node {ex.node_id}, the only one that holds"
                          " them (it may be unreachable now): try again later")
                await websocket.send_text(json.dumps({"type": "end", "state": "error", "exit_code": None,
                                                      "reason": reason}))
                return await websocket.close()
            job = await requester.store.get_job(job_id, full=False)
            ran = end is not None and end.get("state") in RAN
            if ran and follow:
                # it ran: the job's verdict (publishing, other executions) comes before the end
                while not job.state.terminal:
                    await requester.wait_for_change(job_id, 5.0)
                    job = await requester.store.get_job(job_id, full=False)
            if ran or job.state.terminal or not follow:
                return await _send_end(websocket, job, gone)
            # the execution failed or its node went away: wait for the requester to retry (or give up)
            await requester.wait_for_change(job_id, 2.0)
    except WebSocketDisconnect:
        return


async def _send_end(websocket: WebSocket, job: Job, gone: trio.Event) -> None:
    state = job.state.value if job.state.terminal else "running"
    await websocket.send_text(json.dumps(
        {"type": "end", "state": state, "exit_code": _exit_code(job), "reason": job.reason}))
    # Let the client close first (it does on "end"); close ourselves only if it does not.
    with trio.move_on_after(CLIENT_CLOSE_GRACE):
        await gone.wait()
    if not gone.is_set():
        await websocket.close()


async def _forward(node: Node, websocket: WebSocket, ex: Execution, offsets: dict[int, int],
                   follow: bool) -> dict[str, Any] | None:
    """Copy the node's frames for `ex` to the websocket; return the end frame, or None if the stream broke."""
    assert node.transport is not None
    req = LogRequest(execution_id=ex.id, stdout_offset=offsets[1], stderr_offset=offsets[2], follow=follow)
    reader = FrameReader()
    try:
        async with AsyncExitStack() as stack:
            with trio.fail_after(node.config.call_timeout):   # a node cut off never answers the opening
                chunks = await stack.enter_async_context(node.transport.stream(ex.node_id, LOG_PROTOCOL, encode(req)))
            async for chunk in chunks:
                for kind, offset, data in reader.feed(chunk):
                    if kind == END:
                        return json.loads(data)  # type: ignore[no-any-return]
                    # skip what the client already has (a resumed stream starts at its offsets)
                    if offset + len(data) <= offsets[kind]:
                        continue
                    if offset < offsets[kind]:
                        data, offset = data[offsets[kind] - offset:], offsets[kind]
                    await websocket.send_bytes(frame(kind, offset, data))
                    offsets[kind] = offset + len(data)
    except NotFoundError:
        return None
    except (BacalhauError, ValueError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        log.info("log stream of execution %s from %s broke: %s", ex.id, ex.node_id, exc)
        return None
    return None

