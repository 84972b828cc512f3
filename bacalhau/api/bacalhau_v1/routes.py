"""Go Bacalhau v1.0.3's requester API, every endpoint at the root and again under /api/v1 (as Go registered
them; apiclient <= 1.0.3 calls the root, the Go CLI /api/v1). A path that starts `//` (an apiclient host
given with a trailing slash) is served as if collapsed.

    POST requester/submit   signed {"APIVersion","ClientID","Spec"}  -> {"job": Job}; 400 ErrorResponse
    POST requester/states   {"client_id","job_id"}                   -> {"state": JobState}; 500 if unknown
    POST requester/results  {"client_id","job_id"}                   -> {"results": [PublishedResult]}
    POST requester/list     {"client_id","id","include_tags",...}    -> {"jobs": [JobWithInfo]}
    POST requester/events   {"client_id","job_id","filters"}         -> {"events": [JobHistory]}
    POST requester/cancel   signed {"ClientID","JobID","Reason"}     -> {"state": JobState}; 404, 401 non-owner
    POST version            {"client_id"}                            -> {"build_version_info": ...}
    GET  healthz livez readyz logz varz id node_info peers
    WS   requester/websocket/events?job_id=ID                    JobHistory frames (events.py)

Go's handlers take any method; so do these. Env values of a job's spec are always shown as "***": list,
states and events take an unsigned client_id, so nothing proves who asks. Replays: Bacalhau's envelope has
no nonce or time, and PKCS#1 v1.5 signatures are deterministic (the same job submitted twice by its owner is
byte for byte the same request), so the replay guard of our own API cannot apply. A replayed submit runs
the owner's job once more, as the owner; a replayed cancel cancels what the owner already cancelled. Neither
gives an attacker anything the owner's signature did not already grant, and beyond loopback a request needs
the API token (TokenGuard) before it gets here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from bacalhau.api.bacalhau_v1 import mappers
from bacalhau.api.bacalhau_v1.envelope import (
    JOB_NOT_FOUND,
    BadRequest,
    decode_body,
    error_body,
    field,
    loads,
    parse_signed,
)
from bacalhau.api.common import BodyTooLarge, read_body
from bacalhau.errors import AmbiguousIdError, BacalhauError, NotFoundError, StateError, UserError

if TYPE_CHECKING:
    from bacalhau.api.ports import ApiDeps
    from bacalhau.api.replay import SeenSignatures
    from bacalhau.models import Job

log = logging.getLogger(__name__)

PREFIXES = ("", "/api/v1")
MAX_BODY = 10 * 1024 * 1024    # Go's publicapi body limit
HANDLER_TIMEOUT = 30.0         # Go's handler timeout: then 503 "Server Timeout!"
# a module's DAG fetched at submit stops past this many blocks (3 MiB in 256 KiB chunks is 13; a block may be
# 4 MiB, so a hostile DAG costs this node at most 128 MiB of unpinned blocks, not the whole of it)
MAX_MODULE_BLOCKS = 32
MAX_LIST = 1000                # jobs one list answers at most
DEFAULT_LIST = 10
MAX_SCAN = 10_000              # jobs a list filtered by tags (or sorted by id) looks through, in created order
REDACTED = "***"
API_VERSION = {"major": "1", "minor": "0", "gitversion": "v1.0.3", "gitcommit": "", "builddate": "",
               "goos": "linux", "goarch": "amd64"}
JSON_ERRORS = frozenset({"requester/submit", "requester/cancel", "requester/list"})

Handler = Callable[[Request], Awaitable[Response]]


class ServerError(BacalhauError):
    """Answered 500 with the message as plain text (Go's http.Error)."""


class NotOwner(UserError):
    pass


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # Go's json.Encoder: one line and a newline
    return Response(json.dumps(value, separators=(",", ":")) + "\n", status_code=status,
                    media_type="application/json", headers=headers)


def _text(message: str, status: int, end: str = "\n") -> Response:
    return Response(message + end, status_code=status, media_type="text/plain; charset=utf-8")


async def _read(request: Request) -> bytes:
    """The body, refused as soon as it passes MAX_BODY (a declared length over it before a byte is read)."""
    try:
        return await read_body(request, MAX_BODY)
    except BodyTooLarge:
        raise BadRequest(f"http: request body too large (over {MAX_BODY} bytes)") from None


async def _body(request: Request) -> dict[str, Any]:
    body = await _read(request)
    if not body.strip():
        raise BadRequest("EOF")
    text = decode_body(body)
    # a request of the SDK is a hundred bytes; a big one is parsed off the event loop
    value = loads(text) if len(text) < 64 * 1024 else await trio.to_thread.run_sync(loads, text)
    if not isinstance(value, dict):
        raise BadRequest("json: cannot unmarshal into a request object")
    return value


def _redacted(job_json: dict[str, Any]) -> dict[str, Any]:
    spec = job_json["Spec"]
    docker_env = spec["Docker"].get("EnvironmentVariables")
    if docker_env:
        spec["Docker"]["EnvironmentVariables"] = [e.partition("=")[0] + "=" + REDACTED for e in docker_env]
    if spec["Wasm"].get("EnvironmentVariables"):
        spec["Wasm"]["EnvironmentVariables"] = dict.fromkeys(spec["Wasm"]["EnvironmentVariables"], REDACTED)
    return job_json


def _peer(peer_id: str, addrs: list[str]) -> dict[str, Any]:
    """Go's peer.AddrInfo is {"ID","Addrs"}; the apiclient's model reads {"id","addrs"} (and gets None from
    Go): both, so either client reads it (a Go decoder matches keys case-insensitively, both hold the same)."""
    return {"ID": peer_id, "Addrs": addrs, "id": peer_id, "addrs": addrs}


def routes(deps: ApiDeps, seen: SeenSignatures | None = None) -> list[BaseRoute]:
    """The routes; `seen` (our API's replay guard) is not consulted: see the module docstring."""
    requester, jobs = deps.requester, deps.jobs

    def job_json(job: Job) -> dict[str, Any]:
        return _redacted(mappers.job_out(job, deps.identity.node_id))

    async def load(job_id: Any, *, full: bool = False) -> Job:
        if not isinstance(job_id, str) or not job_id:
            raise ServerError("Job not found. ID: ")
        try:
            return await jobs.get_job(await jobs.resolve_id(mappers.job_ref(job_id)), full=full)
        except (NotFoundError, AmbiguousIdError):
            raise ServerError(f"Job not found. ID: {job_id[:100]}") from None

    async def fetch_module(cid_text: str) -> bytes:
        from bacalhau.ipfs.dagpb import valid_cid
        from bacalhau.ipfs.exporter import Limits, cat
        from bacalhau.ipfs.unixfs import cid_to_bytes

        try:
            cid = cid_to_bytes(cid_text)
        except ValueError:
            cid = b""
        if not valid_cid(cid):
            raise BadRequest(f"error validating job: Spec.Wasm.EntryModule.CID {cid_text[:80]!r} is not a CID")
        try:
            await deps.content.fetch_cid(cid, max_blocks=MAX_MODULE_BLOCKS)
        except BacalhauError as exc:
            raise BadRequest(f"Spec.Wasm.EntryModule: {cid_text} could not be fetched: {exc}") from None
        limits = Limits(max_bytes=mappers.MAX_MODULE_BYTES)

        def read() -> bytes:
            return b"".join(cat(cid, deps.content.blockstore, limits))

        try:
            return await trio.to_thread.run_sync(read)
        except BacalhauError as exc:
            raise BadRequest(f"Spec.Wasm.EntryModule: {cid_text}: {exc}") from None

    async def submit(request: Request) -> Response:
        if "x-bacalhau-job-id" in request.headers:
            raise BadRequest("the X-Bacalhau-Job-ID header is not allowed on a submit")
        # parsing 10 MB, verifying and inflating a module are CPU work: off the event loop
        signed = await trio.to_thread.run_sync(parse_signed, await _read(request))
        cid = mappers.entry_module_cid(signed.payload)
        module = await fetch_module(cid) if cid is not None else None
        spec = await trio.to_thread.run_sync(mappers.spec_from_payload, signed.payload, module)
        job = await requester.submit(spec, client_id=signed.client_id)
        log.info("job %s submitted through the Bacalhau API by client %s", job.id, signed.client_id[:16])
        return _json({"job": job_json(job)}, headers={"X-Bacalhau-Client-ID": signed.client_id,
                                                      "X-Bacalhau-Job-ID": job.id})

    async def cancel(request: Request) -> Response:
        signed = await trio.to_thread.run_sync(parse_signed, await _read(request))
        job_id = field(signed.payload, "JobID")
        reason = field(signed.payload, "Reason")
        if not isinstance(job_id, str) or not job_id:
            raise BadRequest("error validating request: the payload has no JobID")
        try:
            job = await jobs.get_job(await jobs.resolve_id(mappers.job_ref(job_id)), full=False)
        except (NotFoundError, AmbiguousIdError) as exc:
            raise NotFoundError(f"job not found: {job_id[:100]}") from exc
        if job.client_id != signed.client_id:
            raise NotOwner("only the client that submitted a job can cancel it")
        if job.state.terminal:
            raise BadRequest(f"job {job.id} is already in a terminal state ({mappers.JOB_STATES[job.state]})")
        text = reason if isinstance(reason, str) and reason else "cancelled by the user"
        await requester.cancel(job.id, text[:1000])
        return _json({"state": mappers.job_state_out(await jobs.get_job(job.id))},
                     headers={"X-Bacalhau-Client-ID": signed.client_id, "X-Bacalhau-Job-ID": job.id})

    async def states(request: Request) -> Response:
        body = await _body(request)
        job = await load(body.get("job_id"), full=True)
        return _json({"state": mappers.job_state_out(job)})

    async def results(request: Request) -> Response:
        body = await _body(request)
        return _json({"results": mappers.results_out(await load(body.get("job_id")))})

    async def events(request: Request) -> Response:
        body = await _body(request)
        job = await load(body.get("job_id"), full=True)
        filters = body["filters"] if isinstance(body.get("filters"), dict) else {}
        since = filters.get("since") or 0
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise BadRequest("filters.since must be a number of unix seconds")
        return _json({"events": mappers.history_out(
            job, since=float(since), exclude_job_level=filters.get("exclude_job_level") is True,
            exclude_execution_level=filters.get("exclude_execution_level") is True)})

    async def list_(request: Request) -> Response:
        body = await _body(request)
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else ""
        include, exclude = body.get("include_tags") or [], body.get("exclude_tags") or []
        if not isinstance(include, list) or not isinstance(exclude, list):
            raise BadRequest("include_tags and exclude_tags must be arrays")
        max_jobs = body.get("max_jobs")
        limit = max_jobs if isinstance(max_jobs, int) and not isinstance(max_jobs, bool) and max_jobs > 0 \
            else DEFAULT_LIST
        limit = min(limit, MAX_LIST)
        sort_by = body.get("sort_by") or "created_at"
        if sort_by not in ("created_at", "id"):
            raise BadRequest(f"sort_by must be created_at or id, not {str(sort_by)[:40]!r}")
        reverse = body.get("sort_reverse") is True
        if body.get("id"):
            try:
                found = [await jobs.get_job(await jobs.resolve_id(mappers.job_ref(body["id"])), full=True)]
            except (NotFoundError, AmbiguousIdError) as exc:
                raise BadRequest(f"job not found: {exc}") from None
        else:
            owner = None if body.get("return_all") is True else client_id
            tagged = bool(include or exclude) or sort_by == "id"
            listed = await jobs.list_jobs(MAX_SCAN if tagged else limit, client_id=owner, oldest_first=not reverse)
            wanted, unwanted = {str(t) for t in include}, {str(t) for t in exclude}
            picked = []
            for job in listed:
                tags = {f"{k}={v}" if v else k for k, v in job.spec.labels.items()}
                if (wanted and not wanted & tags) or unwanted & tags:
                    continue
                picked.append(job)
            if sort_by == "id":
                picked.sort(key=lambda j: j.id, reverse=reverse)
            found = [await jobs.get_job(j.id, full=True) for j in picked[:limit]]
        return _json({"jobs": [{"Job": job_json(j), "State": mappers.job_state_out(j),
                                "History": mappers.history_out(j)} for j in found]})

    async def version(request: Request) -> Response:
        await _body(request)
        return _json({"build_version_info": _version_info()})

    def _version_info() -> dict[str, str]:
        from bacalhau.version import VERSION

        return API_VERSION | {"gitcommit": f"bacalhau-py {VERSION}"}

    async def healthz(request: Request) -> Response:
        def usage(path: Any) -> dict[str, int]:
            try:
                u = shutil.disk_usage(path)
            except OSError:
                return {"All": 0, "Used": 0, "Free": 0}
            return {"All": u.total, "Used": u.used, "Free": u.free}

        space = await trio.to_thread.run_sync(lambda: {"IPFSMount": usage(deps.repo_dir), "tmp": usage("/tmp"),
                                                       "root": usage("/")})
        return _json({"FreeSpace": space})

    async def livez(request: Request) -> Response:
        return _text("OK", 200, end="")

    async def readyz(request: Request) -> Response:
        return _text("READY", 200, end="")

    async def logz(request: Request) -> Response:
        return _text("", 200, end="")      # Go tails its IPFS node's log; the embedded node here keeps none

    async def varz(request: Request) -> Response:
        return _json({})

    async def node_id(request: Request) -> Response:
        return _json(deps.identity.node_id)

    async def node_info(request: Request) -> Response:
        me = deps.identity.identity()
        own = [n for n in requester.alive_nodes() if n.node_id == deps.identity.node_id]
        compute = None
        if own:
            n = own[0]
            capacity = {"CPU": n.capacity_total.cpu, "Memory": n.capacity_total.memory, "Disk": 0, "GPU": 0}
            free = {"CPU": n.capacity_free.cpu, "Memory": n.capacity_free.memory, "Disk": 0, "GPU": 0}
            compute = {"ExecutionEngines": [e.value.capitalize() for e in n.engines], "Verifiers": ["Noop"],
                       "Publishers": ["Ipfs"], "StorageSources": ["IPFS", "URLDownload", "Inline"],
                       "MaxCapacity": capacity, "AvailableCapacity": free, "MaxJobRequirements": capacity,
                       "RunningExecutions": n.running, "EnqueuedExecutions": n.queued}
        return _json({"BacalhauVersion": _version_info(),
                      "PeerInfo": _peer(deps.identity.node_id, list(me.get("addrs") or [])),
                      "NodeType": 1, "Labels": own[0].labels if own else {}, "ComputeNodeInfo": compute})

    async def peers(request: Request) -> Response:
        return _json([_peer(n.node_id, n.addrs) for n in requester.alive_nodes()
                      if n.node_id != deps.identity.node_id])

    table: dict[str, Handler] = {
        "requester/submit": submit, "requester/cancel": cancel, "requester/states": states,
        "requester/results": results, "requester/events": events, "requester/list": list_,
        "version": version, "healthz": healthz, "livez": livez, "readyz": readyz, "logz": logz, "varz": varz,
        "id": node_id, "node_info": node_info, "peers": peers,
    }

    def guarded(name: str, fn: Handler) -> Handler:
        json_errors = name in JSON_ERRORS

        async def handler(request: Request) -> Response:
            def fail(status: int, message: str, code: str = "error-unknown-server-error") -> Response:
                return _json(error_body(message, code), status) if json_errors else _text(message, status)

            started = time.monotonic()
            try:
                with trio.fail_after(HANDLER_TIMEOUT):
                    return await fn(request)
            except trio.TooSlowError:
                log.info("Bacalhau API %s timed out after %.0f s", name, time.monotonic() - started)
                return _text("Server Timeout!", 503)
            except NotOwner as exc:
                return fail(401, str(exc))
            except NotFoundError as exc:
                return fail(404, str(exc), JOB_NOT_FOUND)
            except ServerError as exc:
                return fail(500, str(exc))
            except UserError as exc:      # BadRequest, BodyTooLarge, a spec our model refuses
                return fail(400, str(exc))
            except StateError as exc:
                return fail(400, str(exc))
            except BacalhauError as exc:
                return fail(500, str(exc))

        return handler

    handlers = {name: guarded(name, fn) for name, fn in table.items()}

    async def collapsed(request: Request) -> Response:
        path = "/" + "/".join(p for p in request.url.path.split("/") if p)
        for prefix in PREFIXES:
            name = path.removeprefix(prefix + "/") if path.startswith(prefix + "/") else None
            if name in handlers:
                return await handlers[name](request)
        return _text("404 page not found", 404)

    from bacalhau.api.bacalhau_v1.events import EventSockets

    event_sockets = EventSockets(deps)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    out: list[BaseRoute] = [Route(f"{prefix}/{name}", handler, methods=methods)
                            for prefix in PREFIXES for name, handler in handlers.items()]
    out += [WebSocketRoute(f"{prefix}/requester/websocket/events", event_sockets.serve) for prefix in PREFIXES]
    out += [Route(f"{prefix}//{{rest:path}}", collapsed, methods=methods) for prefix in PREFIXES]
    return out
