"""Bacalhau 1.0's logs websocket (Go v1.0.3 `pkg/requester/publicapi/endpoints_logs.go`), as the Go CLI's
`bacalhau logs [-f]` speaks it:

    GET /requester/logs | /api/v1/requester/logs   (websocket; no query parameters)

1. The client's first message is the signed envelope (envelope.py) of a LogsPayload
   {"ClientID", "JobID", "ExecutionID", "WithHistory", "Follow"}; ExecutionID is the execution's
   ComputeReference ("e-" + our execution id). It must come within FIRST_MESSAGE_TIMEOUT.
2. Only the job's owner (the client id that submitted it) reads its logs.
3. Text frames {"Tag": 1|2, "Data": "<utf-8 text>"} (stdout, stderr), live through the requester's read_logs
   with Follow; a finished execution is replayed whole from the node that ran it, or from its RunOutput when
   that node cannot be reached, or did not complete. Close 1000 at the end.
4. Errors close with 1008 (the request: bad envelope, not the owner, no such job or execution) or 1011 (the
   stream failed). Go used
   1006, which RFC 6455 forbids on the wire (Python's websockets raises on it). The reason is Go's message text
   (its ErrorResponse JSON does not fit the 123 bytes a close reason holds).

We send the history whatever WithHistory says (the Go CLI always asks for it): a compute node's log stream
starts at a byte offset, and where "now" is in it is not known before reading.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import trio
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bacalhau.api.bacalhau_v1.envelope import BadRequest, field, parse_signed
from bacalhau.api.logs import TRY_AGAIN_LATER, Followers, followers_of
from bacalhau.errors import BacalhauError, NotFoundError
from bacalhau.log_frames import STDERR, STDOUT, Data, Ended, Retried, Switched
from bacalhau.models import Execution, ExecutionState

if TYPE_CHECKING:
    from bacalhau.api.ports import ApiDeps

log = logging.getLogger(__name__)
PATHS = ("/requester/logs", "/api/v1/requester/logs")
FIRST_MESSAGE_TIMEOUT = 10.0      # seconds a client has to send its signed request after the handshake
MAX_FIRST_MESSAGE = 64 * 1024     # a LogsPayload envelope is ~1 KiB
NORMAL, POLICY, INTERNAL = 1000, 1008, 1011
MAX_REASON = 123                  # bytes a close frame's reason holds (RFC 6455: 125 with the code)
COMPUTE_REFERENCE_PREFIX = "e-"
JOB_ID = re.compile(r"[0-9a-fA-F-]{1,36}")   # a job id or its prefix, before any store look-up (no LIKE of 64 KiB)


class _Refused(Exception):
    """The request is refused: close with `code` and `message` (Go's text) as the reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def close_reason(message: str) -> str:
    """`message` cut to what a close frame's reason holds (Go's ErrorResponse JSON would not fit one)."""
    return message.encode()[:MAX_REASON].decode(errors="ignore")


def routes(deps: ApiDeps) -> list[BaseRoute]:
    followers = followers_of(deps)   # the caps of api/logs.py, counted with its followers

    async def logs(websocket: WebSocket) -> None:
        await serve_logs(deps, websocket, followers)

    return [WebSocketRoute(path, logs) for path in PATHS]


async def serve_logs(deps: ApiDeps, websocket: WebSocket, followers: Followers) -> None:
    client = websocket.client.host if websocket.client else ""
    await websocket.accept()
    refusal = followers.refusal(client)
    if refusal is not None:
        await websocket.close(TRY_AGAIN_LATER, refusal[:MAX_REASON])
        return
    followers.add(client, 1)
    try:
        await _serve(deps, websocket)
    except _Refused as exc:
        await _close(websocket, exc.code, close_reason(exc.message))
    except WebSocketDisconnect:
        pass
    except Exception:   # the boundary of one follower: it fails alone, with a valid close code
        log.exception("Bacalhau logs websocket failed")
        await _close(websocket, INTERNAL, close_reason("internal error"))
    finally:
        followers.add(client, -1)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code, reason)
    except (RuntimeError, WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the client is gone already


async def _first_message(websocket: WebSocket) -> bytes | None:
    with trio.move_on_after(FIRST_MESSAGE_TIMEOUT):
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        if data is None:
            data = (message.get("text") or "").encode()
        if len(data) > MAX_FIRST_MESSAGE:
            raise _Refused(POLICY, f"failed to decode request: over {MAX_FIRST_MESSAGE} bytes")
        return bytes(data)
    raise _Refused(POLICY, f"no request within {FIRST_MESSAGE_TIMEOUT:g}s")


def _bool(payload: dict[str, Any], name: str) -> bool:
    value = field(payload, name)
    if value is None:
        return False    # Go marshals a false with omitempty: absent
    if not isinstance(value, bool):
        raise _Refused(POLICY, f"failed to decode request: {name} is not a boolean")
    return value


async def _serve(deps: ApiDeps, websocket: WebSocket) -> None:
    body = await _first_message(websocket)
    if body is None:
        return
    try:
        signed = await trio.to_thread.run_sync(parse_signed, body)   # RSA and JSON work: off the event loop
    except BadRequest as exc:
        raise _Refused(POLICY, str(exc)) from None
    job_id, reference = field(signed.payload, "JobID"), field(signed.payload, "ExecutionID")
    if not isinstance(job_id, str) or not isinstance(reference, str):
        raise _Refused(POLICY, "failed to decode request: JobID and ExecutionID must be strings")
    if not JOB_ID.fullmatch(job_id):
        raise _Refused(POLICY, f"Job not found. ID: {job_id[:64]}")
    follow, _ = _bool(signed.payload, "Follow"), _bool(signed.payload, "WithHistory")
    try:
        job = await deps.jobs.get_job(await deps.jobs.resolve_id(job_id), full=False)
    except NotFoundError:
        raise _Refused(POLICY, f"Job not found. ID: {job_id[:64]}") from None
    except BacalhauError as exc:   # an ambiguous prefix
        raise _Refused(POLICY, str(exc)) from None
    if not job.client_id or job.client_id != signed.client_id:
        raise _Refused(POLICY, "only the client that submitted the job can read its logs")
    execution_id = reference.removeprefix(COMPUTE_REFERENCE_PREFIX)
    ex = next((e for e in job.executions if e.id == execution_id), None)
    if ex is None:
        raise _Refused(POLICY, f"unable to find execution {reference[:64]} in job {job.id}")
    if ex.state.terminal and ex.state != ExecutionState.COMPLETED:
        await _replay_run_output(websocket, ex)   # it failed or was cancelled: what it wrote is its RunOutput
        return await _close(websocket, NORMAL, "")
    gone = trio.Event()

    async def watch(cancel: trio.CancelScope) -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass   # the client says nothing more; a close from it ends the follow
        gone.set()
        cancel.cancel()

    refused: _Refused | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        try:
            await _stream(deps, websocket, job.id, ex, follow)
        except _Refused as exc:   # raised out of the nursery it would come wrapped in a group
            refused = exc
        except WebSocketDisconnect:
            gone.set()
        nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused
    if not gone.is_set():
        await _close(websocket, NORMAL, "")


async def _stream(deps: ApiDeps, websocket: WebSocket, job_id: str, ex: Execution, follow: bool) -> None:
    """The execution's log as Go's frames, until it ends (with `follow`) or what there is now is sent."""
    decoders = {kind: codecs.getincrementaldecoder("utf-8")(errors="replace") for kind in (STDOUT, STDERR)}
    sent = False
    events = deps.requester.read_logs(job_id, execution_id=ex.id, follow=follow)
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Data):
                    # a character cut between two chunks is whole in the frame of the second
                    text = decoders[event.kind].decode(event.data)
                    if text:
                        await _send(websocket, event.kind, text)
                        sent = True
                elif isinstance(event, Switched) and event.execution_id == ex.id:
                    continue
                elif isinstance(event, Retried | Switched):
                    break          # the execution asked for is over; the job went on with another
                elif isinstance(event, Ended):
                    if event.state == "error":
                        if sent or ex.result is None:
                            raise _Refused(INTERNAL, event.reason)
                        await _replay_run_output(websocket, ex)   # its node is away: what the requester kept
                    break
    except BacalhauError as exc:
        raise _Refused(INTERNAL, f"failed to read the logs: {exc}") from None
    for kind, decoder in decoders.items():
        if tail := decoder.decode(b"", final=True):
            await _send(websocket, kind, tail)


async def _send(websocket: WebSocket, tag: int, text: str) -> None:
    await websocket.send_text(json.dumps({"Tag": tag, "Data": text}))


async def _replay_run_output(websocket: WebSocket, ex: Execution) -> None:
    """What the requester kept of a run (Go's RunOutput: the tails of stdout and stderr)."""
    if ex.result is not None and ex.result.stdout_tail:
        await _send(websocket, STDOUT, ex.result.stdout_tail)
    if ex.result is not None and ex.result.stderr_tail:
        await _send(websocket, STDERR, ex.result.stderr_tail)
