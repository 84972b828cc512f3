"""The bprotocol over libp2p: each RPC is a request/response on its own stream; results are raw streams
that start with one request frame."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import trio

from bacalhau.bprotocol.framing import error_reply
from bacalhau.bprotocol.transport import LocalTransport, RawHandler, RawStreamHandler
from bacalhau.errors import ProtocolError, RemoteError, TransportError

if TYPE_CHECKING:
    from bacalhau.p2p.host import P2PHost, P2PStream

log = logging.getLogger(__name__)
STREAM_CHUNK = 256 * 1024
STREAM_OK = b"\x00"       # first byte of a result stream: data follows
STREAM_ERR = b"\x01"      # an Envelope with the error follows


class P2PTransport(LocalTransport):
    def __init__(self, host: P2PHost) -> None:
        super().__init__(host.peer_id)
        self._host = host

    def register(self, protocol_id: str, handler: RawHandler) -> None:
        super().register(protocol_id, handler)
        self._host.set_request_handler(protocol_id, handler)

    def register_stream(self, protocol_id: str, handler: RawStreamHandler) -> None:
        super().register_stream(protocol_id, handler)

        async def serve(peer_id: str, stream: P2PStream) -> None:
            request = await stream.read_frame()
            gen = handler(peer_id, request)
            try:
                first = await gen.__anext__()
            except StopAsyncIteration:
                first = b""
            except Exception as exc:  # the per-request boundary of result streams
                await stream.write(STREAM_ERR + error_reply(exc))
                await stream.close()
                return
            await stream.write(STREAM_OK + first)
            async for chunk in gen:
                await stream.write(chunk)
            await stream.close()

        self._host.set_stream_handler(protocol_id, serve)

    async def call(self, peer_id: str, protocol_id: str, payload: bytes, *, timeout: float) -> bytes:
        if peer_id == self.self_id:
            with trio.fail_after(timeout):
                return await self.call_local(peer_id, protocol_id, payload)
        return await self._host.request(peer_id, protocol_id, payload, timeout=timeout)

    def stream(self, peer_id: str, protocol_id: str, payload: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if peer_id == self.self_id:
            return self.stream_local(peer_id, protocol_id, payload)
        return self._remote_stream(peer_id, protocol_id, payload)

    @asynccontextmanager
    async def _remote_stream(self, peer_id: str, protocol_id: str, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        stream = await self._host.open_stream(peer_id, protocol_id)
        try:
            await stream.write_frame(payload)
            await stream.close_write()
            head = await stream.read(STREAM_CHUNK)
            if not head:
                raise TransportError(f"{peer_id} closed the result stream without an answer")
            if head[:1] == STREAM_ERR:
                rest = head[1:]
                while chunk := await stream.read(STREAM_CHUNK):
                    rest += chunk
                from bacalhau.bprotocol.framing import decode
                from bacalhau.bprotocol.messages import Envelope

                envelope = decode(rest, Envelope)
                if envelope.error is None:
                    raise ProtocolError("error stream without an error")
                raise RemoteError(envelope.error.code.value, envelope.error.message)

            async def chunks() -> AsyncIterator[bytes]:
                if len(head) > 1:
                    yield head[1:]
                while chunk := await stream.read(STREAM_CHUNK):
                    yield chunk

            yield chunks()
        finally:
            await stream.close()
