"""Jobs: submit, list, describe, wait for a change, cancel.

    POST /api/v1/jobs                      {"spec": JobSpec}            -> {"id": ...}
    GET  /api/v1/jobs?limit=N              newest first (limit=0: all)
    GET  /api/v1/jobs/{id}                 a unique id prefix is accepted; env values shown as "***" unless
                                           X-Bacalhau-Signed proves the job's owner asks
    GET  /api/v1/jobs/{id}/wait?timeout=S&since=T   returns when the job changes after T, ends, or S passes
    POST /api/v1/jobs/{id}/cancel

Submit, cancel and an owner's describe are signed (signing.py) for this cluster, and each signature is accepted
once (api/replay.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bacalhau.api.common import REDACTED, error, handle_errors, int_param, number_param, read_body, redacted
from bacalhau.api.ports import ApiDeps
from bacalhau.models import JobSpec
from bacalhau.signing import verify

if TYPE_CHECKING:
    from bacalhau.api.replay import SeenSignatures

MAX_WAIT = 60.0
MAX_LIST = 1_000_000     # jobs a list may ask for (SQLite's integers end far past it; 0 asks for all)
SIGNED_HEADER = "x-bacalhau-signed"   # a describe signed by the job's owner shows env values in clear


def spec_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "spec"
    # the location can hold the sender's own map keys: printable, one line, bounded
    where = "".join(c if c.isprintable() else repr(c)[1:-1] for c in where)[:200]
    message = str(first.get("msg", "")).removeprefix("Value error, ")   # pydantic's prefix tells a user nothing
    return f"invalid job spec at {where}: {message}"


def _redacted_env_given(spec: JobSpec) -> str | None:
    for section in (spec.docker, spec.wasm):
        for name, value in (section.env if section is not None else {}).items():
            if value == REDACTED:
                return name
    return None


FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")   # a job id (a UUID)


async def resolve_job_id(deps: ApiDeps, request: Request) -> str:
    """The full id of the job the path names (a unique prefix is enough)."""
    return await deps.jobs.resolve_id(request.path_params["job_id"])


async def job_id_to_read(deps: ApiDeps, request: Request) -> str:
    """resolve_job_id, without the store's look-up where the path gives a whole id, whose read then says if
    it exists (404 as the look-up would, in the same words): the long poll names its job in full, each time."""
    given: str = request.path_params["job_id"]
    return given if FULL_ID.match(given) else await deps.jobs.resolve_id(given)


def routes(deps: ApiDeps, seen: SeenSignatures) -> list[BaseRoute]:
    requester, jobs = deps.requester, deps.jobs
    cluster_id = deps.identity.cluster_id

    async def signed_by(body: dict[str, Any], action: Any) -> str:
        """The client that signed `action` for this cluster, once: a replayed signature is refused."""
        signed = verify(body, action, cluster_id)
        await seen.accept(signed.signature, signed.signed_at)
        return signed.client_id

    async def submit(request: Request) -> Response:
        body = await read_body(request)
        try:
            data = json.loads(body)
        except ValueError:
            return error(400, "request body is not JSON", "bad_request")
        if not isinstance(data, dict) or "spec" not in data:
            return error(400, "request body must be an object with a 'spec'", "bad_request")
        try:
            spec = JobSpec.model_validate(data["spec"])
        except ValidationError as exc:
            return error(400, spec_error(exc), "invalid_spec")
        if (name := _redacted_env_given(spec)) is not None:
            return error(400, f"env {name} is {REDACTED!r}, as `describe` shows env values: give its real value",
                         "invalid_spec")
        # the signature is recorded with the job, in its transaction (one durable commit): a replay is a 409
        signed = verify(data, {"submit": data["spec"]}, cluster_id)
        job = await requester.submit(spec, client_id=signed.client_id, signature=(signed.signature, signed.signed_at))
        return JSONResponse({"id": job.id}, status_code=201)

    async def list_jobs(request: Request) -> Response:
        limit = int_param(request, "limit", 10, -1, MAX_LIST)    # 0 or -1: all
        found = await jobs.list_jobs(limit if limit > 0 else None)
        return JSONResponse([j.summary() for j in found])

    async def describe(request: Request) -> Response:
        job = await jobs.get_job(await job_id_to_read(deps, request))
        proof = request.headers.get(SIGNED_HEADER)
        if proof is not None:
            # the owner, proven by a signature of {"describe": the id as asked}, sees its env values
            try:
                body = json.loads(proof)
            except ValueError:
                return error(400, f"the {SIGNED_HEADER} header is not JSON", "bad_request")
            client_id = await signed_by(body if isinstance(body, dict) else {},
                                        {"describe": request.path_params["job_id"]})
            if job.client_id and client_id == job.client_id:
                return JSONResponse(job.model_dump(mode="json"))
        return JSONResponse(redacted(job))

    async def wait(request: Request) -> Response:
        job_id = await job_id_to_read(deps, request)
        timeout = min(number_param(request, "timeout", 30.0, 0.0, math.inf), MAX_WAIT)
        since = number_param(request, "since", 0.0, -math.inf, math.inf)
        deadline = time.monotonic() + timeout
        while True:
            job = await jobs.get_job(job_id, full=False)
            latest = max([job.updated_at, *(e.updated_at for e in job.executions)])
            remaining = deadline - time.monotonic()
            if job.state.terminal or latest > since or remaining <= 0:
                return JSONResponse(redacted(job))
            await requester.wait_for_change(job_id, remaining)

    async def cancel(request: Request) -> Response:
        job_id = await resolve_job_id(deps, request)
        try:
            body = json.loads(await read_body(request) or b"{}")
        except ValueError:
            return error(400, "request body is not JSON", "bad_request")
        client_id = await signed_by(body if isinstance(body, dict) else {}, {"cancel": job_id})
        owner = (await jobs.get_job(job_id, full=False)).client_id
        if owner and owner != client_id:
            return error(403, "only the client that submitted a job can cancel it", "forbidden")
        job = await requester.cancel(job_id)
        return JSONResponse(redacted(job))

    return [
        Route("/api/v1/jobs", handle_errors(submit), methods=["POST"]),
        Route("/api/v1/jobs", handle_errors(list_jobs), methods=["GET"]),
        Route("/api/v1/jobs/{job_id}", handle_errors(describe)),
        Route("/api/v1/jobs/{job_id}/wait", handle_errors(wait)),
        Route("/api/v1/jobs/{job_id}/cancel", handle_errors(cancel), methods=["POST"]),
    ]
