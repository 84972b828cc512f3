"""The live dashboard of the network's jobs, and the JSON behind each of its panels.

    GET /dashboard                          the page (HTML; its figures then arrive live over the stream)
    GET /dashboard/jobs/{id}                one job's page: what the network said of it, and where this node is
                                            its requester, its spec, executions and live logs
    GET /dashboard/assets/{name}            the page's script and style (no asset from elsewhere)
    GET /api/v1/dashboard/summary           totals: jobs, running, pending, completed, failed, cancelled,
                                            unique clients, nodes alive
    GET /api/v1/dashboard/timeseries?unit=minute|hour|day   per bucket (ISO-ordered): jobs created, completed,
                                            failed, cancelled
    GET /api/v1/dashboard/breakdowns        top counts by engine, image, state, node, label, failure reason
    GET /api/v1/dashboard/durations         per engine: count, p50, p95 seconds (creation to completion)
    GET /api/v1/dashboard/nodes             the nodes alive: capacity total/free, running, last seen
    GET /api/v1/dashboard/jobs?limit=N      the latest jobs, newest first
    GET /api/v1/dashboard/jobs/{id}         one job as gossiped
    GET /api/v1/dashboard/snapshot          all of the above in one object (what the stream sends)
    GET /api/v1/dashboard/stream            server-sent events: `snapshot` at once and at each change

Where the node runs Amplify, the page's Amplify panel reads its API (api/amplify.py): GET /api/v0/queue, then
/api/v0/queue/{id} for each run's DAG and node states, and /api/v0/lineage/{cid} for a CID's lineage.

Beyond loopback these need the token like the rest of the API; a browser cannot set a header on a page it
opens or on an EventSource, so `?token=` is taken on the page's and the stream's GETs too (TokenGuard), and the
page keeps it out of Referer (no-referrer). Every string a peer gossiped reaches the page as JSON and is put in
the page with textContent, never as markup; the page's own HTML is escaped here; a strict CSP allows only this
origin's script.
"""

from __future__ import annotations

import html
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bacalhau.errors import BacalhauError

if TYPE_CHECKING:
    from bacalhau.api.ports import ApiDeps, DashboardView

STREAM_REFRESH = 5.0         # a snapshot at least this often, changed or not
STREAM_MIN_GAP = 0.25        # snapshots at most this often (a burst of events is one snapshot)
MAX_STREAMS = 64
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-store"}


def _asset(name: str) -> str:
    return resources.files("bacalhau.dashboard").joinpath("assets", name).read_text(encoding="utf-8")


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def routes(deps: ApiDeps) -> list[BaseRoute]:
    view = deps.dashboard
    if view is None:
        return []
    streams = [0]
    node_id = deps.identity.node_id

    async def snapshot() -> dict[str, Any]:
        data: dict[str, Any] = await view.store.snapshot(time.time())
        nodes = view.nodes()
        data["summary"]["nodes"] = len(nodes)
        data["nodes"] = nodes
        data["node_id"] = node_id
        data["at"] = time.time()
        return data

    async def page(request: Request) -> Response:
        summary = (await view.store.summary()) | {"nodes": len(view.nodes())}
        # the Amplify panel reads /api/v0 (api/amplify.py) where this node runs the engine, and is left out otherwise
        amplify = deps.amplify is not None
        return HTMLResponse(_page("Network dashboard", "dashboard", "", summary, amplify=amplify,
                                  token=request.query_params.get("token", "")), headers=HEADERS)

    async def job_page(request: Request) -> Response:
        job_id = _uuid(request.path_params["job_id"])
        if job_id is None:
            return HTMLResponse(_page("No such job", "missing", "", {}), status_code=404, headers=HEADERS)
        return HTMLResponse(_page(f"Job {job_id}", "job", job_id, {}, token=request.query_params.get("token", "")),
                            headers=HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _error(404, f"no dashboard asset {name[:40]!r}", "not_found")
        return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)

    async def summary(request: Request) -> Response:
        return JSONResponse((await view.store.summary()) | {"nodes": len(view.nodes())})

    async def timeseries(request: Request) -> Response:
        try:
            return JSONResponse(await view.store.timeseries(request.query_params.get("unit", "minute"), time.time()))
        except ValueError as exc:
            return _error(400, str(exc), "bad_request")

    async def breakdowns(request: Request) -> Response:
        return JSONResponse(await view.store.breakdowns())

    async def durations(request: Request) -> Response:
        return JSONResponse(await view.store.durations())

    async def nodes(request: Request) -> Response:
        return JSONResponse(view.nodes())

    async def latest(request: Request) -> Response:
        text = request.query_params.get("limit", "25")
        if not text.isdigit():
            return _error(400, f"limit must be a number, not {text[:20]!r}", "bad_request")
        return JSONResponse(await view.store.latest(int(text)))

    async def one_job(request: Request) -> Response:
        job_id = _uuid(request.path_params["job_id"])
        row = await view.store.job(job_id) if job_id is not None else None
        if row is None:
            return _error(404, f"the network told this node of no job {request.path_params['job_id'][:40]!r}",
                          "not_found")
        row["local"] = row["requester"] == node_id     # its spec and logs are on this node's API
        return JSONResponse(row)

    async def whole(request: Request) -> Response:
        return JSONResponse(await snapshot())

    async def stream(request: Request) -> Response:
        if streams[0] >= MAX_STREAMS:
            return _error(503, f"this node serves {MAX_STREAMS} dashboard streams already: try again later", "busy")
        return StreamingResponse(_events(view, snapshot, streams), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    api = "/api/v1/dashboard"
    handlers = [
        ("/dashboard", page), ("/dashboard/", page), ("/dashboard/jobs/{job_id}", job_page),
        ("/dashboard/assets/{name}", asset), (f"{api}/summary", summary), (f"{api}/timeseries", timeseries),
        (f"{api}/breakdowns", breakdowns), (f"{api}/durations", durations), (f"{api}/nodes", nodes),
        (f"{api}/jobs", latest), (f"{api}/jobs/{{job_id}}", one_job), (f"{api}/snapshot", whole),
        (f"{api}/stream", stream),
    ]
    return [Route(path, _answered(fn)) for path, fn in handlers]


def _answered(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A request that fails (the node stopping under it: its database closed) gets a reason, not a traceback."""
    async def handle(request: Request) -> Response:
        try:
            return await fn(request)
        except BacalhauError as exc:
            return _error(503, str(exc), "unavailable")
    return handle


async def _events(view: DashboardView, snapshot: Any, streams: list[int]) -> AsyncIterator[bytes]:
    """A snapshot now, then one at each change (coalesced), and every STREAM_REFRESH anyway (the time series
    moves on, and the nodes' last-seen times). The node list is compared at each wake-up: a node that goes
    silent leaves it at its TTL with no event to say so."""
    streams[0] += 1
    try:
        last_key: tuple[int, str] | None = None
        last_sent = -STREAM_REFRESH
        while True:
            nodes = [{k: v for k, v in n.items() if k != "last_seen"} for n in view.nodes()]
            key = (view.store.version, json.dumps(nodes, sort_keys=True))
            if key != last_key or trio.current_time() - last_sent >= STREAM_REFRESH:
                try:
                    data = await snapshot()
                except BacalhauError:
                    return      # the node is stopping: the stream ends, the page's EventSource tries again
                last_key, last_sent = key, trio.current_time()
                yield b"event: snapshot\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
            await trio.sleep(STREAM_MIN_GAP)
            await view.wait_changed(1.0)
    finally:
        streams[0] -= 1


def _uuid(text: str) -> str | None:
    try:
        value = str(uuid.UUID(text))
    except ValueError:
        return None
    return value if value == text.lower() else None


TILES = (("jobs", "Jobs"), ("running", "Running now"), ("completed", "Completed"), ("failed", "Failed"),
         ("clients", "Unique clients"), ("nodes", "Nodes"))


def _page(title: str, mode: str, job_id: str, summary: dict[str, Any], *, amplify: bool = False,
          token: str = "") -> str:
    """The page's HTML; beyond loopback its assets need the token the page was opened with."""
    from urllib.parse import quote

    e = html.escape
    q = e(f"?token={quote(token, safe='')}") if token else ""
    tiles = "".join(f'<div class="tile"><div class="n" id="t-{key}">{e(str(summary.get(key, "")))}</div>'
                    f'<div class="k">{e(label)}</div></div>' for key, label in TILES)
    return _asset("page.html").format(title=e(title), mode=e(mode), job_id=e(job_id), tiles=tiles,
                                      amplify="1" if amplify else "", q=q)
