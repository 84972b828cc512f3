"""A job's results, from wherever they are: the one place that chooses.

    GET  /api/v1/jobs/{id}/results/{item}  item: stdout | stderr | exitCode | tar

`fetch_result` is that choice, for this route and any other caller (the CLI's `get`, `describe` and `docker run`
reach it only through this route): the completed execution (else one that ran), its published result over
IPFS first (fetched from whichever nodes hold it, so this node need not be the one that ran the job), and the
compute node that ran it when the blocks are held by no node. The answer says which in X-Result-Source.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bacalhau.api.common import chain, first_chunk, handle_errors
from bacalhau.api.ports import ApiDeps, ContentStore
from bacalhau.compute.results import ITEMS, stream_file
from bacalhau.errors import NotFoundError, UserError
from bacalhau.models import Execution, ExecutionState, Job

log = logging.getLogger(__name__)
FROM_IPFS, FROM_NODE = "ipfs", "node"


@dataclass
class JobResult:
    chunks: AsyncIterator[bytes]
    source: str                  # FROM_IPFS or FROM_NODE
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def result_execution(job: Job) -> Execution:
    """The execution whose result a job shows: a completed one, else one that ran (failed, say)."""
    done = [e for e in job.executions if e.state == ExecutionState.COMPLETED]
    if not done:
        done = [e for e in job.executions if e.result is not None]
        if not done:
            raise NotFoundError(f"job {job.id} has no result yet (it is {job.state.value})")
    return done[0]


async def _from_ipfs(content: ContentStore, ref: str, item: str) -> JobResult:
    cid_text = ref.removeprefix("ipfs://")
    if item == "tar":
        path = await content.result_tar(cid_text)
    else:
        path = await content.result_file(cid_text, item)
    size = (await trio.Path(path).stat()).st_size
    media_type = "application/x-tar" if item == "tar" else "application/octet-stream"
    return JobResult(stream_file(path, remove=True), FROM_IPFS, media_type,
                     {"Content-Length": str(size), "X-Result-CID": ref})


async def fetch_result(content: ContentStore, job: Job, item: str) -> JobResult:
    """Item `item` of the job's result: over IPFS when it was published and some node holds its blocks, else
    from the compute node that ran it. A missing result is a NotFoundError before any byte is answered."""
    if item not in ITEMS:
        raise UserError(f"unknown result item {item!r} (one of {', '.join(ITEMS)})")
    execution = result_execution(job)
    headers = {"X-Execution-Id": execution.id, "X-Node-Id": execution.node_id}
    if execution.result_ref.startswith("ipfs://"):
        try:
            result = await _from_ipfs(content, execution.result_ref, item)
        except NotFoundError as exc:
            log.info("result %s of job %s not fetched over IPFS (%s): asking its node", execution.result_ref,
                     job.id, exc)
        else:
            result.headers |= headers
            return result
    stream = content.open_result(execution.node_id, execution.id, item)
    first = await first_chunk(stream)
    return JobResult(chain(first, stream), FROM_NODE, "application/octet-stream", headers)


def routes(deps: ApiDeps) -> list[BaseRoute]:
    async def results(request: Request) -> Response:
        job = await deps.jobs.get_job(await deps.jobs.resolve_id(request.path_params["job_id"]), full=False)
        result = await fetch_result(deps.content, job, request.path_params["item"])
        return StreamingResponse(result.chunks, media_type=result.media_type,
                                 headers={**result.headers, "X-Result-Source": result.source})

    return [Route("/api/v1/jobs/{job_id}/results/{item}", handle_errors(results))]
