"""Typed clients of the bprotocol: the requester's view of compute nodes and the compute node's view of
requesters. Every call has a timeout; failures arrive as TransportError or RemoteError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import trio
from pydantic import BaseModel

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import encode, parse_reply
from bacalhau.bprotocol.ids import ResultItem
from bacalhau.bprotocol.transport import LocalTransport, Transport
from bacalhau.errors import ProtocolError, RemoteError, TransportError

R = TypeVar("R", bound=BaseModel)


class _Proxy:
    def __init__(self, transport: Transport, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout

    async def _call(self, peer_id: str, protocol_id: str, msg: BaseModel, reply: type[R], *,
                    payload: bytes | None = None) -> R:
        try:
            if peer_id == self._transport.self_id and isinstance(self._transport, LocalTransport):
                # this node's own handler, given the object (transport.py: the same checks, no JSON)
                return await self._transport.call_self(protocol_id, msg, reply, timeout=self._timeout)
            neighbour_call = getattr(self._transport, "call_neighbour", None)   # P2PTransport in a devstack
            if neighbour_call is not None and payload is None:
                answer: R | None = await neighbour_call(peer_id, protocol_id, msg, reply, timeout=self._timeout)
                if answer is not None:
                    return answer
            data = await self._transport.call(peer_id, protocol_id, payload or encode(msg), timeout=self._timeout)
        except trio.TooSlowError:
            raise TransportError(f"{protocol_id} to {peer_id} timed out after {self._timeout:g}s") from None
        return parse_reply(data, reply)


class ComputeProxy(_Proxy):
    async def ask_for_bid(self, peer_id: str, req: m.AskForBidRequest) -> None:
        await self._call(peer_id, m.ASK_FOR_BID, req, m.Ack)

    async def ask_for_bid_approved(self, peer_id: str, req: m.AskForBidRequest) -> m.BidResult:
        """The pre-approved ask: the bid comes as the reply. UnsupportedProtocolError from a node of before it."""
        return await self._call(peer_id, m.ASK_FOR_BID_APPROVED, req, m.BidResult)

    async def bid_accepted(self, peer_id: str, execution_id: str) -> None:
        await self._call(peer_id, m.BID_ACCEPTED, m.ExecutionRequest(execution_id=execution_id), m.Ack)

    async def bid_rejected(self, peer_id: str, execution_id: str, reason: str) -> None:
        await self._call(peer_id, m.BID_REJECTED, m.ExecutionReasonRequest(execution_id=execution_id, reason=reason), m.Ack)

    async def result_accepted(self, peer_id: str, execution_id: str) -> None:
        await self._call(peer_id, m.RESULT_ACCEPTED, m.ExecutionRequest(execution_id=execution_id), m.Ack)

    async def result_rejected(self, peer_id: str, execution_id: str, reason: str) -> None:
        await self._call(
            peer_id, m.RESULT_REJECTED, m.ExecutionReasonRequest(execution_id=execution_id, reason=reason), m.Ack
        )

    async def cancel(self, peer_id: str, execution_id: str, reason: str) -> None:
        await self._call(peer_id, m.CANCEL, m.ExecutionReasonRequest(execution_id=execution_id, reason=reason), m.Ack)

    async def execution_status(self, peer_id: str, execution_id: str) -> m.ExecutionStatus:
        return await self._call(peer_id, m.EXECUTION_STATUS, m.ExecutionRequest(execution_id=execution_id),
                                m.ExecutionStatus)

    def get_result(self, peer_id: str, execution_id: str, item: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if item not in set(ResultItem):
            raise ProtocolError(f"unknown result item {item!r} (one of {', '.join(ResultItem)})")
        request = m.GetResultRequest(execution_id=execution_id, item=ResultItem(item))
        return self._transport.stream(peer_id, m.GET_RESULT, encode(request))


class CallbackProxy(_Proxy):
    async def on_bid_complete(self, peer_id: str, msg: m.BidResult) -> None:
        await self._call(peer_id, m.ON_BID_COMPLETE, msg, m.Ack)

    async def on_run_complete(self, peer_id: str, msg: m.RunComplete) -> None:
        await self._call(peer_id, m.ON_RUN_COMPLETE, msg, m.Ack)

    async def on_publish_complete(self, peer_id: str, msg: m.PublishComplete) -> None:
        await self._call(peer_id, m.ON_PUBLISH_COMPLETE, msg, m.Ack)

    async def on_run_published(self, peer_id: str, msg: m.RunPublished) -> None:
        await self._call(peer_id, m.ON_RUN_PUBLISHED, msg, m.Ack)

    async def on_cancel_complete(self, peer_id: str, msg: m.CancelComplete) -> None:
        await self._call(peer_id, m.ON_CANCEL_COMPLETE, msg, m.Ack)

    async def on_compute_failure(self, peer_id: str, msg: m.ComputeFailure) -> None:
        """`retry` is sent only when False. A requester older than the field refuses it (unknown fields are
        refused): it is then told again without it, and retries the job elsewhere as it always did."""
        def payload(retry: bool) -> bytes:
            return msg.model_dump_json(exclude=None if not retry else {"retry"}).encode()

        try:
            await self._call(peer_id, m.ON_COMPUTE_FAILURE, msg, m.Ack, payload=payload(msg.retry))
        except RemoteError as exc:
            if msg.retry or exc.code != m.ErrorCode.BAD_REQUEST:
                raise
            await self._call(peer_id, m.ON_COMPUTE_FAILURE, msg, m.Ack, payload=payload(True))
