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
