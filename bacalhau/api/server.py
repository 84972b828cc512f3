"""The HTTP API (Starlette on hypercorn's trio worker). Everything a client does goes through here.

    GET  /api/v1/version | /api/v1/id | /api/v1/nodes
    POST /api/v1/jobs                      {"spec": JobSpec}            -> {"id": ...}
    GET  /api/v1/jobs?limit=N              newest first (limit=0: all)
    GET  /api/v1/jobs/{id}                 a unique id prefix is accepted; env values shown as "***" unless
                                           X-Bacalhau-Signed proves the job's owner asks
    GET  /api/v1/jobs/{id}/wait?timeout=S&since=T   returns when the job changes after T, ends, or S passes
    POST /api/v1/jobs/{id}/cancel
    GET  /api/v1/jobs/{id}/results/{item}  item: stdout | stderr | exitCode | tar
    WS   /api/v1/jobs/{id}/logs            live logs (see api/logs.py)
Errors are {"error": message, "code": kind} with a 4xx/5xx status.

Every request passes api/guard.py first (Host, Origin, JSON bodies), then TokenGuard beyond loopback. Submit,
cancel and an owner's describe are signed (signing.py) for this cluster, and each signature is accepted once
(api/replay.py). Bodies are capped while they stream in.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bacalhau.api.dashboard import routes as dashboard_routes
from bacalhau.api.guard import is_loopback
from bacalhau.api.ports import ApiDeps
from bacalhau.compute.results import stream_file
from bacalhau.errors import AmbiguousIdError, BacalhauError, NotFoundError, StateError, UserError
from bacalhau.models import ExecutionState, Job, JobSpec
from bacalhau.signing import verify
from bacalhau.version import VERSION

if TYPE_CHECKING:
    from bacalhau.api.replay import SeenSignatures
    from bacalhau.node import Node

log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024     # a JSON body (a job spec with inline inputs), counted while it streams in
MAX_WAIT = 60.0
REDACTED = "***"               # env values as the API shows them: another client's secrets stay theirs
SIGNED_HEADER = "x-bacalhau-signed"   # a describe signed by the job's owner shows env values in clear


class BodyTooLarge(UserError):
    pass


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def _handle_errors(fn: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except BodyTooLarge as exc:
            return _error(413, str(exc), "too_large")
        except NotFoundError as exc:
            return _error(404, str(exc), "not_found")
        except AmbiguousIdError as exc:
            return _error(400, str(exc), "ambiguous_id")
        except (UserError, ValueError) as exc:
            return _error(400, str(exc), "bad_request")
        except StateError as exc:
            return _error(409, str(exc), "conflict")
        except BacalhauError as exc:
            return _error(502, str(exc), "upstream")

    return wrapper


def _spec_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "spec"
    # the location can hold the sender's own map keys: printable, one line, bounded
    where = "".join(c if c.isprintable() else repr(c)[1:-1] for c in where)[:200]
    message = str(first.get("msg", "")).removeprefix("Value error, ")   # pydantic's prefix tells a user nothing
    return f"invalid job spec at {where}: {message}"


async def read_body(request: Request, cap: int = MAX_BODY) -> bytes:
    """The body, refused with BodyTooLarge as soon as it passes `cap` (a declared length over it is refused
    before reading a byte): a 100 MB body costs this node at most `cap` of memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge(f"request body over {cap} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"request body over {cap} bytes")
        parts.append(chunk)
    return b"".join(parts)


def redacted(job: Job) -> dict[str, Any]:
    """The job as the API shows it: env values of its docker or wasm spec replaced by REDACTED."""
    data = job.model_dump(mode="json")
    for engine in ("docker", "wasm"):
        section = data["spec"].get(engine)
        if isinstance(section, dict) and section.get("env"):
            section["env"] = dict.fromkeys(section["env"], REDACTED)
    return data


def _redacted_env_given(spec: JobSpec) -> str | None:
    for section in (spec.docker, spec.wasm):
        for name, value in (section.env if section is not None else {}).items():
            if value == REDACTED:
                return name
    return None


def build_app(node: Node, seen: SeenSignatures) -> Starlette:
    requester = node.requester
    assert requester is not None
    cluster_id = node.cluster_id

    async def signed_by(body: dict[str, Any], action: Any) -> str:
        """The client that signed `action` for this cluster, once: a replayed signature is refused."""
        signed = verify(body, action, cluster_id)
        await seen.accept(signed.signature, signed.signed_at)
        return signed.client_id

    @_handle_errors
    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    @_handle_errors
    async def node_id(request: Request) -> Response:
        return JSONResponse(node.identity())

    @_handle_errors
    async def nodes(request: Request) -> Response:
        return JSONResponse([n.model_dump(mode="json") for n in requester.nodes.alive()])

    @_handle_errors
    async def submit(request: Request) -> Response:
        body = await read_body(request)
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "request body is not JSON", "bad_request")
        if not isinstance(data, dict) or "spec" not in data:
            return _error(400, "request body must be an object with a 'spec'", "bad_request")
        try:
            spec = JobSpec.model_validate(data["spec"])
        except ValidationError as exc:
            return _error(400, _spec_error(exc), "invalid_spec")
        if (name := _redacted_env_given(spec)) is not None:
            return _error(400, f"env {name} is {REDACTED!r}, as `describe` shows env values: give its real value",
                          "invalid_spec")
        client_id = await signed_by(data, {"submit": data["spec"]})
        job = await requester.submit(spec, client_id=client_id)
        return JSONResponse({"id": job.id}, status_code=201)

    @_handle_errors
    async def list_jobs(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "10"))
        jobs = await requester.store.list_jobs(limit if limit > 0 else None)
        return JSONResponse([j.summary() for j in jobs])

    async def _job_id(request: Request) -> str:
        return await requester.store.resolve_id(request.path_params["job_id"])

    @_handle_errors
    async def describe(request: Request) -> Response:
        job = await requester.store.get_job(await _job_id(request))
        proof = request.headers.get(SIGNED_HEADER)
        if proof is not None:
            # the owner, proven by a signature of {"describe": the id as asked}, sees its env values
            try:
                body = json.loads(proof)
            except ValueError:
                return _error(400, f"the {SIGNED_HEADER} header is not JSON", "bad_request")
            client_id = await signed_by(body if isinstance(body, dict) else {},
                                        {"describe": request.path_params["job_id"]})
            if job.client_id and client_id == job.client_id:
                return JSONResponse(job.model_dump(mode="json"))
        return JSONResponse(redacted(job))

    @_handle_errors
    async def wait(request: Request) -> Response:
        job_id = await _job_id(request)
        timeout = min(float(request.query_params.get("timeout", "30")), MAX_WAIT)
        since = float(request.query_params.get("since", "0"))
        deadline = time.monotonic() + timeout
        while True:
            job = await requester.store.get_job(job_id, full=False)
            latest = max([job.updated_at, *(e.updated_at for e in job.executions)])
            remaining = deadline - time.monotonic()
            if job.state.terminal or latest > since or remaining <= 0:
                return JSONResponse(redacted(job))
            await requester.wait_for_change(job_id, remaining)

    @_handle_errors
    async def cancel(request: Request) -> Response:
        job_id = await _job_id(request)
        try:
            body = json.loads(await read_body(request) or b"{}")
        except ValueError:
            return _error(400, "request body is not JSON", "bad_request")
        client_id = await signed_by(body if isinstance(body, dict) else {}, {"cancel": job_id})
        owner = (await requester.store.get_job(job_id, full=False)).client_id
        if owner and owner != client_id:
            return _error(403, "only the client that submitted a job can cancel it", "forbidden")
        job = await requester.cancel(job_id)
        return JSONResponse(redacted(job))

    @_handle_errors
    async def results(request: Request) -> Response:
        job = await requester.store.get_job(await _job_id(request), full=False)
        item = request.path_params["item"]
        done = [e for e in job.executions if e.state == ExecutionState.COMPLETED]
        if not done:
            ran = [e for e in job.executions if e.result is not None]
            if not ran:
                raise NotFoundError(f"job {job.id} has no result yet (it is {job.state.value})")
            done = ran
        execution = done[0]
        headers = {"X-Execution-Id": execution.id, "X-Node-Id": execution.node_id}
        if item == "tar" and execution.result_ref.startswith("ipfs://"):
            # the published result, fetched over bitswap from whichever nodes hold it (the one that ran the
            # job at least), so this node need not be that one; the size lets the CLI show progress
            try:
                tar_path = await node.result_tar(execution.result_ref.removeprefix("ipfs://"))
            except NotFoundError as exc:
                log.info("result %s of job %s not fetched over IPFS (%s): asking its node", execution.result_ref,
                         job.id, exc)
            else:
                size = (await trio.Path(tar_path).stat()).st_size
                headers |= {"Content-Length": str(size), "X-Result-CID": execution.result_ref}
                return StreamingResponse(stream_file(tar_path, remove=True), media_type="application/x-tar",
                                         headers=headers)
        stream = node.open_result(execution.node_id, execution.id, item)
        first = await _first_chunk(stream)
        return StreamingResponse(_chain(first, stream), media_type="application/octet-stream", headers=headers)

    from bacalhau.api.logs import Followers, job_logs

    followers = Followers()

    async def logs(websocket: WebSocket) -> None:
        await job_logs(node, websocket, followers)

    routes = [
        Route("/api/v1/version", version),
        Route("/api/v1/id", node_id),
        Route("/api/v1/nodes", nodes),
        Route("/api/v1/jobs", submit, methods=["POST"]),
        Route("/api/v1/jobs", list_jobs, methods=["GET"]),
        Route("/api/v1/jobs/{job_id}", describe),
        Route("/api/v1/jobs/{job_id}/wait", wait),
        Route("/api/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/v1/jobs/{job_id}/results/{item}", results),
        WebSocketRoute("/api/v1/jobs/{job_id}/logs", logs),
    ]
    from bacalhau.api.ipfs import routes as ipfs_routes

    routes += [Route(path, _handle_errors(fn), methods=methods) for path, fn, methods in ipfs_routes(node)]
    routes += dashboard_routes(ApiDeps.from_node(node))
    return Starlette(routes=routes)


async def _first_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    """Pull the first chunk before answering, so a missing result is a 404, not a broken 200."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


QUERY_TOKEN_PATHS = ("/dashboard", "/api/v1/dashboard/stream")   # a browser sets no header on these (api/dashboard.py)


def _query_token_path(scope: dict[str, Any]) -> bool:
    path = scope.get("path", "")
    return scope.get("method") == "GET" and any(path == p or path.startswith(p + "/") for p in QUERY_TOKEN_PATHS)


class TokenGuard:
    """ASGI middleware: requests that do not come from loopback must carry the API token
    (`Authorization: Bearer TOKEN`, or `?token=` on the log websocket)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            client = (scope.get("client") or ("",))[0] or ""
            if not is_loopback(client):
                headers = dict(scope.get("headers") or [])
                given = headers.get(b"authorization", b"").decode().removeprefix("Bearer ").strip()
                if not given and (scope["type"] == "websocket" or _query_token_path(scope)):
                    from urllib.parse import parse_qs

                    given = (parse_qs(scope.get("query_string", b"").decode()).get("token") or [""])[0]
                if not hmac.compare_digest(given, self.token):
                    if scope["type"] == "websocket":
                        await send({"type": "websocket.close", "code": 4401})
                        return
                    await JSONResponse({"error": "this API needs a token (BACALHAU_API_TOKEN)", "code": "unauthorized"},
                                       status_code=401)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


SEND_TIMEOUT = 30.0        # a write to a client that stays blocked this long (it stopped reading) drops it
HYPERCORN_VERSION = "0.18.0"   # the version whose TCPServer _guard_hypercorn patches


def _guard_hypercorn() -> None:
    """Two fixes to hypercorn's trio TCPServer, for the version they were written against only.

    It sends EOF on close without its send lock, so a client closing a websocket while the app streams to it
    raises BusyResourceError in the listener and ends the whole server. Take the lock there too (unless this
    task already holds it: a failed send closes from inside the lock).

    It writes to the socket in a shielded scope without a deadline, so a client that stops reading (a log
    follower, a download) holds its handler, and what feeds it, for ever. Give each write SEND_TIMEOUT, then
    abort the connection: the app sees the client gone."""
    from importlib.metadata import version

    from hypercorn.events import Closed, RawData
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer, "_bacalhau_guarded", False):
        return
    if version("hypercorn") != HYPERCORN_VERSION:
        log.warning("hypercorn %s is not %s: its close and write-deadline fixes are not applied",
                    version("hypercorn"), HYPERCORN_VERSION)
        return
    original = TCPServer._close
    original_send = TCPServer.protocol_send

    async def protocol_send(self: Any, event: Any) -> None:
        if not isinstance(event, RawData):
            await original_send(self, event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True), trio.fail_after(SEND_TIMEOUT):
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            except trio.TooSlowError:
                log.info("dropped API client %s: a write stayed blocked for %gs", self.protocol.client, SEND_TIMEOUT)
                await self.stream.aclose()
                await self.protocol.handle(Closed())

    async def _close(self: Any) -> None:
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await original(self)
            return
        async with self.send_lock:
            await original(self)

    TCPServer._close = _close  # type: ignore[method-assign]
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]
    TCPServer._bacalhau_guarded = True  # type: ignore[attr-defined]


async def serve_api(app: Any, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run hypercorn on trio; report the bound port through task_status."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    _guard_hypercorn()

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
