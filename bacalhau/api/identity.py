"""Who this node is and which compute nodes it sees.

    GET  /api/v1/version | /api/v1/id | /api/v1/nodes
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bacalhau.api.common import handle_errors
from bacalhau.api.ports import ApiDeps
from bacalhau.version import VERSION


def routes(deps: ApiDeps) -> list[BaseRoute]:
    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def node_id(request: Request) -> Response:
        return JSONResponse(deps.identity.identity())

    async def nodes(request: Request) -> Response:
        return JSONResponse([n.model_dump(mode="json") for n in deps.requester.alive_nodes()])

    return [
        Route("/api/v1/version", handle_errors(version)),
        Route("/api/v1/id", handle_errors(node_id)),
        Route("/api/v1/nodes", handle_errors(nodes)),
    ]
