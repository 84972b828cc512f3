"""The HTTP API (Starlette on hypercorn's trio worker). Everything a client does goes through here.

Routes live in modules by concern, each exposing `routes(deps, ...)` over api/ports.py's narrow protocols (the
API never holds the Node): api/identity.py (version, id, nodes), api/jobs.py (submit, list, describe, wait,
cancel), api/results.py (results, from IPFS or the compute node), api/logs.py (the log websocket), api/ipfs.py
(the IPFS store). Errors are {"error": message, "code": kind} with a 4xx/5xx status (api/common.py).

Every request passes api/guard.py first (Host, Origin, JSON bodies), then TokenGuard beyond loopback. Bodies
are capped while they stream in.
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from bacalhau.api import amplify, dashboard, identity, ipfs, jobs, results
from bacalhau.api.common import MAX_BODY, REDACTED, BodyTooLarge, Handler, handle_errors, read_body, redacted
from bacalhau.api.guard import RequestGuard, is_loopback
from bacalhau.api.ports import ApiDeps

if TYPE_CHECKING:
    from bacalhau.api.replay import SeenSignatures

# what route modules written before the split import from here
__all__ = ["MAX_BODY", "REDACTED", "BodyTooLarge", "Handler", "handle_errors", "read_body", "redacted",
           "build_app", "serve_api", "TokenGuard"]

log = logging.getLogger(__name__)


def build_app(deps: ApiDeps, seen: SeenSignatures, *, host: str, token: str | None = None) -> Any:
    """The routes of every module, inside the guards: RequestGuard outermost (Host, Origin and Content-Type
    before anything), then TokenGuard when the API has a token."""
    from bacalhau.api import logs
    from bacalhau.api.bacalhau_v1 import logs as bacalhau_logs
    from bacalhau.api.bacalhau_v1 import routes as bacalhau_v1

    routes: list[BaseRoute] = [
        *identity.routes(deps),
        *jobs.routes(deps, seen),
        *results.routes(deps),
        *logs.routes(deps),
        *ipfs.routes(deps),
        *bacalhau_v1.routes(deps, seen),       # Go Bacalhau 1.0's API, which the official Python SDK calls
        *bacalhau_logs.routes(deps),
        *dashboard.routes(deps),
        *amplify.routes(deps, seen),
    ]
    app: Any = Starlette(routes=routes)
    if token:
        app = TokenGuard(app, token)
    return RequestGuard(app, host)


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
    """Fixes to hypercorn's trio TCPServer and HTTP/1.1 protocol, for the version they were written against only.

    It sends EOF on close without its send lock, so a client closing a websocket while the app streams to it
    raises BusyResourceError in the listener and ends the whole server. Take the lock there too (unless this
    task already holds it: a failed send closes from inside the lock).

    It writes to the socket in a shielded scope without a deadline, so a client that stops reading (a log
    follower, a download) holds its handler, and what feeds it, for ever. Give each write SEND_TIMEOUT, then
    abort the connection: the app sees the client gone.

    It writes a response's head, its body and its end as three writes (the end an empty one): each a socket
    send, and on loopback each send runs the client's side of TCP too (a sixth of the event loop under the
    throughput benchmark). A head that declares a Content-Length is held until the body's first part comes,
    and goes out with it; an empty write is skipped. A streamed answer (chunked, no length) has its head sent
    at once, as before: a client waiting on a stream sees the status before the first part.

    It stops a connection's idle watcher (a task) as each request comes and starts a new one when it is
    answered; the watcher is now one task for the connection's life whose deadline moves (_IdleWatch),
    stopped when the client's side ends (hypercorn's kept an idle connection the client closed open until
    its keep-alive time).
    A write the socket takes whole at once (nearly every answer) is made in the writer's step (_send_now):
    the lock, the two scopes and trio's scheduler round trips are for a write that has to wait.
    Together they took a GET /api/v1/version from ~500 to ~290 us of node CPU (benchmarks/api_requests.py)."""
    from importlib.metadata import version

    import h11
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer, "_bacalhau_guarded", False):
        return
    if version("hypercorn") != HYPERCORN_VERSION:
        log.warning("hypercorn %s is not %s: its close, write and idle-watch fixes are not applied",
                    version("hypercorn"), HYPERCORN_VERSION)
        return
    original = TCPServer._close
    original_send = TCPServer.protocol_send

    async def protocol_send(self: Any, event: Any) -> None:
        if not isinstance(event, RawData):
            if isinstance(event, Updated):
                _idle_watch(self).set_idle(event.idle, self.config.keep_alive_timeout)
                return
            await original_send(self, event)
            return
        data = event.data
        started = False     # part of it is on the wire: the rest goes too, cancelled or not (no torn frame)
        if not self.send_lock.locked():
            sent = _send_now(self.stream, data)
            if sent is None:
                await self.protocol.handle(Closed())
                return
            if sent == len(data):
                return
            data, started = data[sent:], sent > 0
        with trio.CancelScope(shield=started):
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True), trio.fail_after(SEND_TIMEOUT):
                        await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
                except trio.TooSlowError:
                    log.info("dropped API client %s: a write stayed blocked for %gs", self.protocol.client,
                             SEND_TIMEOUT)
                    await self.stream.aclose()
                    await self.protocol.handle(Closed())

    async def _close(self: Any) -> None:
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await original(self)
            return
        async with self.send_lock:
            await original(self)

    async def _send_h11_event(self: Any, event: Any) -> None:
        held: bytes = self.__dict__.pop("_bacalhau_head", b"")
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        else:
            if type(event) is h11.Response and any(name == b"content-length" for name, _ in event.headers):
                self._bacalhau_head = held + data    # goes with the body's first part, or the end
                return
        if held or data:
            await self.send(RawData(data=held + data))

    async def _idle_timeout(self: Any) -> None:
        watch = _idle_watch(self)
        if await watch.run(self.context.terminated):
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()

    original_read = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        await original_read(self)
        # the client's EOF (or a read error) ends the connection: nothing more to watch. In a request (as
        # before) it is answered or cancelled; idle, its watcher held the connection (CLOSE-WAIT) and its task
        # up to the keep-alive time, for each a client opened and closed
        await self.idle_task.stop()

    TCPServer._idle_timeout = _idle_timeout  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TCPServer._close = _close  # type: ignore[method-assign]
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]
    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    TCPServer._bacalhau_guarded = True  # type: ignore[attr-defined]


def _send_now(stream: Any, data: bytes) -> int | None:
    """What of `data` the socket takes at once (0 when its buffer is full: the caller waits as before), in
    the caller's step: no lock, deadline or scheduler round trip for the answer that fits, nearly every one.
    None when the client is gone. A stream that is not a plain socket (TLS) takes the usual path."""
    sock = getattr(getattr(stream, "socket", None), "_sock", None)     # trio's socket wraps the stdlib one
    if not isinstance(sock, socket.socket) or stream.socket.did_shutdown_SHUT_WR or sock.fileno() == -1:
        return 0
    try:
        return sock.send(data, socket.MSG_NOSIGNAL)
    except BlockingIOError:
        return 0
    except OSError:
        return None


def _idle_watch(server: Any) -> _IdleWatch:
    watch: _IdleWatch | None = server.__dict__.get("_bacalhau_idle")
    if watch is None:
        watch = server._bacalhau_idle = _IdleWatch(trio.current_time() + server.config.keep_alive_timeout)
    return watch


class _IdleWatch:
    """When a kept-alive connection stays idle too long, or the server stops while it is idle, it is closed.
    Hypercorn cancels its watcher task as each request comes and starts a new one when it is answered (a task
    made and ended per request); this one task lives as long as the connection: a request moves its deadline
    away, its answer brings the deadline back."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline          # inf while a request runs
        self._scope: trio.CancelScope | None = None
        self._rearmed: trio.Event | None = None

    @property
    def idle(self) -> bool:
        return self.deadline != math.inf

    def set_idle(self, idle: bool, keep_alive: float) -> None:
        self.deadline = trio.current_time() + keep_alive if idle else math.inf
        if self._scope is not None:
            self._scope.deadline = self.deadline
        elif idle and self._rearmed is not None:
            self._rearmed.set()

    async def run(self, terminated: Any) -> bool:
        """Returns (True) when the connection is to be closed: idle past the deadline, or idle with the server
        stopping; a stop that comes during a request closes it once the request is answered."""
        while True:
            if not self.idle:
                self._rearmed = trio.Event()
                await self._rearmed.wait()
                self._rearmed = None
                continue
            with trio.CancelScope(deadline=self.deadline) as self._scope:
                await terminated.wait()
            self._scope = None
            if self.idle:
                return True


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
