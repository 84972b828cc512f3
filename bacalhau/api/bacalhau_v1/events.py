"""GET (websocket) requester/websocket/events?job_id=ID, as Go v1.0.3: the job's stored history first, then
each new event as it happens, as JobHistory JSON text frames. Go streamed live events as its internal
JobEvent; here they are JobHistory too (one shape to read). The socket closes 1000 once the job has ended
and its last events are sent; without a job_id it closes 1008 (Go streamed every job's events: not here,
as they would name other clients' jobs). What the client sends is read and ignored, to notice it leave."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import trio
from starlette.websockets import WebSocket

from bacalhau.api.bacalhau_v1 import mappers
from bacalhau.errors import AmbiguousIdError, NotFoundError

if TYPE_CHECKING:
    from bacalhau.api.ports import ApiDeps

MAX_OPEN = 256          # event sockets open at once on this node
WAIT = 30.0             # one wait for a change; the job is read again after it either way
POLICY = 1008


class EventSockets:
    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self.open = 0

    async def serve(self, websocket: WebSocket) -> None:
        if self.open >= MAX_OPEN:
            await websocket.close(1013, "too many event sockets open: try again later")
            return
        self.open += 1
        try:
            await self._serve(websocket)
        finally:
            self.open -= 1

    async def _serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        jobs = self.deps.jobs
        asked = websocket.query_params.get("job_id", "")
        if not asked:
            await websocket.close(POLICY, "job_id is required")
            return
        try:
            job_id = await jobs.resolve_id(mappers.job_ref(asked))
        except (NotFoundError, AmbiguousIdError) as exc:
            await websocket.close(POLICY, str(exc)[:120])
            return
        async with trio.open_nursery() as nursery:
            async def until_gone() -> None:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_gone)
            sent = 0
            while True:
                job = await jobs.get_job(job_id, full=True)
                history = mappers.history_out(job)
                for item in history[sent:]:
                    await websocket.send_text(json.dumps(item, separators=(",", ":")))
                sent = len(history)
                if job.state.terminal:
                    await websocket.close(1000)
                    nursery.cancel_scope.cancel()
                    return
                await self.deps.requester.wait_for_change(job_id, WAIT)
