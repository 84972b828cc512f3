"""Amplify over HTTP, in the original's JSON:API shapes (without its quirks: an empty page is 200, a graph node
appears once, with its parents and children by id).

    GET  /api/v0                               links
    PUT  /api/v0/queue/{uuid}                  {"data": {"attributes": {"inputs": [{"cid": CID}],
                                               "workflow": YAML (optional: the node's default),
                                               "no_cache": true (optional: run every step)}}, + signature}
                                               -> 202 new, 200 the same run again (the client picks the id);
                                               429 with a reason when the queue is full
    GET  /api/v0/queue?page[size]=N&page[number]=K   newest first
    GET  /api/v0/queue/{uuid}                  the run, its DAG and each node's state
    POST /api/v0/queue/{uuid}/cancel           cancels its jobs in flight
    GET  /api/v0/graph                         the default workflow's nodes
    GET  /api/v0/lineage/{cid}?direction=up|down|both&depth=N   what made a CID and what was made from it
    GET  /api/v0/jobs, /api/v0/jobs/{id}       the default workflow's jobs
    GET  /api/v0/analytics/results/{key}?page[size]=N    the commonest values of a key in steps' JSON stdout
    GET  /api/v0/analytics/metrics-over-time/{submissions|node-results}?hours=N   per hour, oldest first
Errors are {"error": message, "title", "detail", "status"}.

A run request and a cancel are signed by the client (signing.py; the signature fields beside "data"), each
signature accepted once, as for jobs: the run's jobs are submitted as that client's, and only it cancels the run.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bacalhau.amplify.actions import cancel_action, run_action
from bacalhau.api.common import handle_errors, int_param, read_body
from bacalhau.errors import NotFoundError, UserError

if TYPE_CHECKING:
    from bacalhau.amplify.store import RunRecord
    from bacalhau.api.ports import ApiDeps
    from bacalhau.api.replay import SeenSignatures

MAX_BODY = 512 * 1024           # a run request with its workflow (a workflow is at most 256 KiB)
MAX_PAGE = 100
DEFAULT_PAGE = 10
MAX_DEPTH = 20
MAX_LINEAGE_ITEMS = 1000
MAX_KEY = 200
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, title: str) -> JSONResponse:
    return JSONResponse({"error": message, "title": title, "detail": message, "status": status,
                         "links": {"home": "/api/v0"}}, status_code=status)


_TITLES = {"too_large": "Too large", "not_found": "Not found", "ambiguous_id": "Bad request",
           "bad_request": "Bad request", "conflict": "Conflict", "upstream": "Upstream error"}


def _answer(status: int, message: str, code: str) -> Response:
    return _error(status, message, _TITLES.get(code, code))


def _guard(fn: Handler) -> Handler:
    """api/common.py's error mapping in the original's JSON:API error shape, and a full queue a 429."""
    from bacalhau.amplify.store import QueueFull

    async def queue_full(request: Request) -> Response:
        try:
            return await fn(request)
        except QueueFull as exc:
            return _error(429, str(exc), "Queue full")

    return handle_errors(queue_full, _answer)


def parse_run_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UserError(f"run id {text[:80]!r} is not a UUID") from None


def parse_cid(text: object) -> str:
    from bacalhau.ipfs.dagpb import valid_cid
    from bacalhau.ipfs.unixfs import cid_str, cid_to_bytes

    if not isinstance(text, str) or len(text) > 100:
        raise UserError("a CID is a string like Qm... or bafy...")
    try:
        raw = cid_to_bytes(text)
    except (ValueError, IndexError):
        raw = b""
    if not valid_cid(raw) or cid_str(raw) != text:
        raise UserError(f"{text[:80]!r} is not a sha2-256 CID")
    return text


async def _body(request: Request) -> Any:
    # refused as it passes the cap, a 413 as on every other route (it was a 400, the body grown by copies)
    data = await read_body(request, MAX_BODY)
    try:
        return json.loads(data) if data else {}
    except ValueError:
        raise UserError("the request body is not JSON") from None


def item(run: RunRecord) -> dict[str, Any]:
    done = [n for n in run.nodes.values() if n.state.terminal]
    return {"type": "QueueItem", "id": run.id,
            "attributes": {"inputs": [{"cid": run.cid}], "outputs": [{"cid": c} for c in run.outputs]},
            "meta": {"submitted": run.created_at, "started": run.started_at, "ended": run.ended_at,
                     "status": run.state.value, "reason": run.reason,
                     "progress": f"{round(100 * len(done) / len(run.nodes)) if run.nodes else 0}%"},
            "links": {"self": f"/api/v0/queue/{run.id}"}}


def detail(run: RunRecord) -> dict[str, Any]:
    from bacalhau.amplify.workflow import WorkflowError, parsed_workflow

    out = item(run)
    out["type"] = "QueueItemDetail"
    out["links"]["list"] = "/api/v0/queue"
    try:
        wf = parsed_workflow(run.workflow)
    except WorkflowError as exc:    # stored by a version that took what this one refuses: the states still show
        out["attributes"]["graph"] = [{"type": "Node", "id": n, "attributes": rec.to_json()}
                                      for n, rec in run.nodes.items()]
        out["meta"]["workflow_error"] = str(exc)
        return out
    children = wf.children()
    graph = []
    for node_id in wf.order():
        node = wf.node(node_id)
        rec = run.nodes.get(node_id)
        graph.append({"type": "Node", "id": node_id,
                      "attributes": {"job_id": node.job_id, "parents": node.parents(), "children": children[node_id],
                                     "inputs": [i.model_dump(exclude_none=True) for i in node.inputs],
                                     "when": node.when.model_dump() if node.when else None,
                                     **(rec.to_json() if rec else {})}})
    out["attributes"]["graph"] = graph
    return out


def routes(deps: ApiDeps, seen: SeenSignatures) -> list[BaseRoute]:
    """Amplify's routes; with no engine (serve --no-amplify) each answers 503 with why."""
    amplify = deps.amplify
    if amplify is None:
        async def off(request: Request) -> Response:
            return _error(503, "amplify is off on this node (serve --no-amplify)", "Unavailable")

        return [Route("/api/v0/{rest:path}", off, methods=["GET", "PUT", "POST"])]
    engine = amplify

    async def signed_by(body: Any, action: Any) -> str:
        from bacalhau.signing import verify

        signed = verify(body if isinstance(body, dict) else {}, action, deps.identity.cluster_id)
        await seen.accept(signed.signature, signed.signed_at)
        return signed.client_id

    @_guard
    async def home(request: Request) -> Response:
        return JSONResponse({"links": {"self": "/api/v0", "queue": "/api/v0/queue", "graph": "/api/v0/graph",
                                       "jobs": "/api/v0/jobs", "lineage": "/api/v0/lineage/{cid}",
                                       "results": "/api/v0/analytics/results/{key}",
                                       "metrics": "/api/v0/analytics/metrics-over-time/{submissions|node-results}"},
                             "jsonapi": {"version": "1.1"}})

    @_guard
    async def put_run(request: Request) -> Response:
        run_id = parse_run_id(request.path_params["run_id"])
        body = await _body(request)
        attrs = body.get("data", {}).get("attributes") if isinstance(body, dict) and isinstance(
            body.get("data"), dict) else None
        if not isinstance(attrs, dict):
            raise UserError('the body must be {"data": {"attributes": {"inputs": [{"cid": CID}]}}}')
        inputs = attrs.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise UserError("inputs must hold exactly one {\"cid\": CID}")
        cid = parse_cid(inputs[0].get("cid"))
        workflow = attrs.get("workflow")
        if workflow is not None and not isinstance(workflow, str):
            raise UserError("workflow must be the workflow's YAML text")
        no_cache = attrs.get("no_cache", False)
        if not isinstance(no_cache, bool):
            raise UserError("no_cache must be true or false")
        client_id = await signed_by(body, run_action(run_id, cid, workflow, no_cache))
        run, new = await engine.submit(run_id, cid, workflow, client_id, no_cache=no_cache)
        return JSONResponse({"data": item(run)}, status_code=202 if new else 200)

    @_guard
    async def list_runs(request: Request) -> Response:
        size = int_param(request, "page[size]", DEFAULT_PAGE, 1, MAX_PAGE)
        number = int_param(request, "page[number]", 1, 1, 1_000_000)
        runs, total = await engine.store.list_runs(size, (number - 1) * size)
        pages = max(1, math.ceil(total / size))
        links = {"first": f"/api/v0/queue?page[size]={size}&page[number]=1",
                 "last": f"/api/v0/queue?page[size]={size}&page[number]={pages}"}
        if number < pages:
            links["next"] = f"/api/v0/queue?page[size]={size}&page[number]={number + 1}"
        if number > 1:
            links["prev"] = f"/api/v0/queue?page[size]={size}&page[number]={min(number - 1, pages)}"
        return JSONResponse({"data": [item(r) for r in runs], "meta": {"count": total, "totalPages": pages},
                             "links": links})

    @_guard
    async def get_run(request: Request) -> Response:
        run = await engine.store.get_run(parse_run_id(request.path_params["run_id"]))
        return JSONResponse({"data": detail(run)})

    @_guard
    async def cancel_run(request: Request) -> Response:
        run_id = parse_run_id(request.path_params["run_id"])
        client_id = await signed_by(await _body(request), cancel_action(run_id))
        owner = (await engine.store.get_run(run_id)).client_id
        if owner and owner != client_id:
            return _error(403, "only the client that requested a run can cancel it", "Forbidden")
        run = await engine.cancel(run_id)
        return JSONResponse({"data": item(run)})

    @_guard
    async def graph(request: Request) -> Response:
        from bacalhau.amplify.workflow import parsed_workflow

        if not engine.default_workflow:
            return JSONResponse({"data": []})
        wf = parsed_workflow(engine.default_workflow)
        return JSONResponse({"data": [{"type": "Node", "id": n.id, "attributes": n.model_dump(mode="json")}
                                      for n in wf.graph]})

    @_guard
    async def lineage(request: Request) -> Response:
        cid = parse_cid(request.path_params["cid"])
        direction = request.query_params.get("direction", "both")
        if direction not in ("up", "down", "both"):
            raise UserError("direction must be up, down or both")
        depth = int_param(request, "depth", 1, 1, MAX_DEPTH)
        return JSONResponse({"data": await engine.store.lineage(cid, direction, depth, MAX_LINEAGE_ITEMS)})

    def default_jobs() -> list[Any]:
        from bacalhau.amplify.workflow import parsed_workflow

        return list(parsed_workflow(engine.default_workflow).jobs) if engine.default_workflow else []

    def job_item(job: Any) -> dict[str, Any]:
        return {"type": "Job", "id": job.id, "attributes": job.model_dump(mode="json", exclude_none=True),
                "links": {"self": f"/api/v0/jobs/{job.id}"}}

    @_guard
    async def jobs(request: Request) -> Response:
        return JSONResponse({"data": [job_item(j) for j in default_jobs()], "links": {"self": "/api/v0/jobs"}})

    @_guard
    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        for j in default_jobs():
            if j.id == job_id:
                return JSONResponse({"data": job_item(j)})
        raise NotFoundError(f"no job {job_id[:80]!r} in the default workflow")

    @_guard
    async def result_values(request: Request) -> Response:
        from bacalhau.amplify.analytics import top_values

        key = request.path_params["key"]
        if not 0 < len(key) <= MAX_KEY or not key.isprintable():
            raise UserError(f"a key is 1 to {MAX_KEY} printable characters")
        size = int_param(request, "page[size]", DEFAULT_PAGE, 1, MAX_PAGE)
        found = await engine.store.query(top_values(key, size))
        return JSONResponse({"data": [{"type": "ResultValue", "id": str(rank),
                                       "attributes": {"key": key, "value": value, "count": count}}
                                      for rank, (value, count) in enumerate(found["values"], 1)],
                             "meta": {"key": key, "steps_read": found["scanned"]}})

    @_guard
    async def metrics(request: Request) -> Response:
        from bacalhau.amplify.analytics import MAX_HOURS, SERIES, over_time

        series = request.path_params["series"]
        if series not in SERIES:
            raise NotFoundError(f"no metric {series[:40]!r}: submissions or node-results")
        hours = int_param(request, "hours", 24 * 7, 1, MAX_HOURS)
        points = await engine.store.query(over_time(series, hours))
        return JSONResponse({"data": [{"type": "MetricOverTime", "id": p["hour"], "attributes": p}
                                      for p in points], "meta": {"series": series, "hours": hours}})

    return [
        Route("/api/v0", home),
        Route("/api/v0/jobs", jobs),
        Route("/api/v0/jobs/{job_id}", job),
        Route("/api/v0/analytics/results/{key}", result_values),
        Route("/api/v0/analytics/metrics-over-time/{series}", metrics),
        Route("/api/v0/queue", list_runs),
        Route("/api/v0/queue/{run_id}", put_run, methods=["PUT"]),
        Route("/api/v0/queue/{run_id}", get_run, methods=["GET"]),
        Route("/api/v0/queue/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/api/v0/graph", graph),
        Route("/api/v0/lineage/{cid}", lineage),
    ]
