"""The job log websocket: a bridge from the requester's `read_logs` (requester/logs.py: which execution, retries,
the node's log stream) to the client's websocket.

    GET /api/v1/jobs/{id}/logs?follow=1[&execution_id=E&stdout_offset=N&stderr_offset=M]   (websocket)

Binary messages are log data frames, text messages JSON events (execution, retry, end): log_frames.py.
A client that lost its connection reconnects with the execution id and the offsets it has.

Followers (of every log websocket of the API, Bacalhau's too) are capped in total and per client address (MAX_FOLLOWERS, MAX_FOLLOWERS_PER_CLIENT): one over is
accepted and closed at once with code 1013 (try again later) and the reason. A follower that stops reading
is dropped when a write to it stays blocked for SEND_TIMEOUT (api/server.py), not held without end.
"""

from __future__ import annotations

import weakref
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bacalhau.errors import BacalhauError
from bacalhau.log_frames import STDERR, STDOUT, Ended, to_message

if TYPE_CHECKING:
    from bacalhau.api.ports import ApiDeps, RequesterEndpoint

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


_followers: weakref.WeakKeyDictionary[ApiDeps, Followers] = weakref.WeakKeyDictionary()


def followers_of(deps: ApiDeps) -> Followers:
    """The log followers of the API `deps` serves: one count for every log websocket it has (ours and
    Bacalhau's), so using the other kind does not double the caps."""
    return _followers.setdefault(deps, Followers())


def routes(deps: ApiDeps) -> list[BaseRoute]:
    followers = followers_of(deps)

    async def logs(websocket: WebSocket) -> None:
        await job_logs(deps.requester, websocket, followers)

    return [WebSocketRoute("/api/v1/jobs/{job_id}/logs", logs)]


async def job_logs(requester: RequesterEndpoint, websocket: WebSocket, followers: Followers) -> None:
    client = websocket.client.host if websocket.client else ""
    await websocket.accept()
    refusal = followers.refusal(client)
    if refusal is not None:
        await websocket.close(TRY_AGAIN_LATER, refusal)
        return
    followers.add(client, 1)   # no await since the check: concurrent handshakes cannot all slip under the cap
    try:
        await _serve_follower(requester, websocket)
    finally:
        followers.add(client, -1)


async def _serve_follower(requester: RequesterEndpoint, websocket: WebSocket) -> None:
    params = websocket.query_params
    follow = params.get("follow", "1") not in ("0", "false")
    try:
        execution_id = params.get("execution_id", "")
        offsets = {STDOUT: int(params.get("stdout_offset", "0")), STDERR: int(params.get("stderr_offset", "0"))}
    except ValueError as exc:
        await _send(websocket, to_message(Ended("error", None, f"bad log offset: {exc}")))
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
        events = requester.read_logs(websocket.path_params["job_id"], execution_id=execution_id,
                                     stdout_offset=offsets[STDOUT], stderr_offset=offsets[STDERR], follow=follow)
        try:
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Ended):
                        await _send_end(websocket, event, gone)
                        break
                    await _send(websocket, to_message(event))
        except BacalhauError as exc:   # no such job, or the job store failed it: the follower alone ends
            await _send_end(websocket, Ended("error", None, str(exc)), gone)
        except WebSocketDisconnect:
            pass
        nursery.cancel_scope.cancel()


async def _send(websocket: WebSocket, message: bytes | str) -> None:
    if isinstance(message, bytes):
        await websocket.send_bytes(message)
    else:
        await websocket.send_text(message)


async def _send_end(websocket: WebSocket, end: Ended, gone: trio.Event) -> None:
    await _send(websocket, to_message(end))
    if end.state == "error":
        await websocket.close()
        return
    # Let the client close first (it does on "end"); close ourselves only if it does not.
    with trio.move_on_after(CLIENT_CLOSE_GRACE):
        await gone.wait()
    if not gone.is_set():
        await websocket.close()
