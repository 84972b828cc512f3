"""The bprotocol over libp2p. While the transport runs, small calls to a peer share one mux stream
(bprotocol/mux.py); a peer that does not speak the mux (an older node) gets them one stream each, as does
every call of a transport that is not running (a bare client) or runs with the mux off. Result and log
streams are raw streams of their own that start with one request frame."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import trio
from pydantic import BaseModel

from bacalhau.bprotocol.framing import error_reply
from bacalhau.bprotocol.mux import MUX_PROTOCOL, MuxCaller, MuxServer, PeerSlots
from bacalhau.bprotocol.transport import (
    InProcessPeers,
    LocalTransport,
    RawHandler,
    RawStreamHandler,
    TypedHandler,
)
from bacalhau.errors import ProtocolError, RemoteError, TransportError, UnsupportedProtocolError

if TYPE_CHECKING:
    from bacalhau.p2p.host import P2PHost, P2PStream

log = logging.getLogger(__name__)
Rep = TypeVar("Rep", bound=BaseModel)
T = TypeVar("T")
STREAM_CHUNK = 256 * 1024
STREAM_OK = b"\x00"       # first byte of a result stream: data follows
STREAM_ERR = b"\x01"      # an Envelope with the error follows
PER_CALL_RECHECK = 60.0   # a peer without the mux is asked again after this long (it may have been upgraded)


class P2PTransport(LocalTransport):
    def __init__(self, host: P2PHost, *, mux: bool = True, neighbours: InProcessPeers | None = None) -> None:
        super().__init__(host.peer_id)
        self._neighbours = neighbours
        self._host = host
        self._mux = mux
        self._slots = PeerSlots()
        self.mux_server: MuxServer | None = None
        self._nursery: trio.Nursery | None = None
        self._callers: dict[str, MuxCaller] = {}
        self._opening: dict[str, trio.Lock] = {}
        self._per_call_until: dict[str, float] = {}

    @property
    def host(self) -> P2PHost:
        return self._host

    async def run(self, *, task_status: trio.TaskStatus[P2PTransport] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves and opens mux streams (with the mux on) until cancelled; the streams opened are its tasks."""
        if not self._mux:
            task_status.started(self)
            return
        self.mux_server = MuxServer(self.handlers, self._slots, max_frame=self._host.max_frame,
                                    write_timeout=self._host.read_timeout)
        self._host.set_stream_handler(MUX_PROTOCOL, self.mux_server.serve)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._neighbours is not None:
                self._neighbours.transports[self.self_id] = self
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                if self._neighbours is not None and self._neighbours.transports.get(self.self_id) is self:
                    del self._neighbours.transports[self.self_id]

    def register(self, protocol_id: str, handler: RawHandler) -> None:
        super().register(protocol_id, handler)
        self._host.set_request_handler(protocol_id, self._bounded(handler))

    def _bounded(self, handler: RawHandler) -> RawHandler:
        """A call on a stream of its own counts against its peer's calls in flight too: it waits its turn,
        up to the read timeout (then its stream is reset)."""
        async def bounded(peer_id: str, payload: bytes) -> bytes:
            with trio.fail_after(self._host.read_timeout):
                await self._slots.take(peer_id)
            try:
                return await handler(peer_id, payload)
            finally:
                self._slots.give_back(peer_id)

        return bounded

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
        if self._nursery is None or self._per_call_until.get(peer_id, 0.0) > trio.current_time():
            return await self._host.request(peer_id, protocol_id, payload, timeout=timeout)
        try:
            with trio.fail_after(timeout):
                neighbour = self._neighbours.transports.get(peer_id) if self._neighbours is not None else None
                if neighbour is not None:
                    return await neighbour.answer_neighbour(self.self_id, protocol_id, payload)
                caller = await self._caller(peer_id)
                if caller is None:
                    return await self._host.request(peer_id, protocol_id, payload, timeout=timeout)
                return await caller.call(protocol_id, payload)
        except trio.TooSlowError:
            raise TransportError(f"{protocol_id} to {peer_id} timed out after {timeout:g}s") from None

    async def call_neighbour(self, peer_id: str, protocol_id: str, msg: BaseModel, reply: type[Rep], *,
                             timeout: float) -> Rep | None:
        """A call to a node of this process whose handler is typed, handed the message object (no JSON either
        way: TypedHandler.answer checks it as decoding would, and raises the RemoteError the Envelope would
        carry); None where `peer_id` is no such node (the caller sends bytes). The callee's slots, nursery and
        stopping apply as for a call in bytes (answer_neighbour)."""
        neighbour = self._neighbours.transports.get(peer_id) if self._neighbours is not None else None
        if neighbour is None or self._nursery is None or peer_id == self.self_id:
            return None
        handler = neighbour.handlers.get(protocol_id)
        if not isinstance(handler, TypedHandler):
            return None
        caller_id = self.self_id
        try:
            with trio.fail_after(timeout):
                return await neighbour._in_nursery(caller_id, protocol_id, lambda: handler.answer(caller_id, msg, reply))
        except trio.TooSlowError:
            raise TransportError(f"{protocol_id} to {peer_id} timed out after {timeout:g}s") from None

    async def answer_neighbour(self, caller_id: str, protocol_id: str, payload: bytes) -> bytes:
        """A call from a node of this process, answered as the mux server answers one (bprotocol/mux.py): the
        same frame limits, per-peer slots (BUSY when full) and errors; the handler runs in this transport's
        nursery, so a caller that gives up does not cut it halfway, and this node stopping fails the call."""
        max_frame = self._host.max_frame
        if len(payload) > max_frame:
            raise ProtocolError(f"frame of {len(payload)} bytes is over the {max_frame} limit")
        handler = self.handlers.get(protocol_id)
        if handler is None:
            raise UnsupportedProtocolError(f"node {self.self_id} does not speak {protocol_id}")

        async def answer() -> bytes:
            try:
                reply = await handler(caller_id, payload)
            except Exception as exc:  # the per-request boundary: a raw handler's error fails its call alone
                log.debug("in-process handler for %s failed: %r", protocol_id, exc)
                why = f"{type(exc).__name__}: {exc}"[:1000]
                raise ProtocolError(f"{protocol_id} on {self.self_id} failed: {why}") from None
            if len(reply) > max_frame:
                raise ProtocolError(f"{protocol_id} on {self.self_id} failed: reply of {len(reply)} bytes is over "
                                    f"the {max_frame} limit")
            return reply

        return await self._in_nursery(caller_id, protocol_id, answer)

    async def _in_nursery(self, caller_id: str, protocol_id: str, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` run in this transport's nursery under one of the caller's slots (BUSY when none is free):
        a caller that gives up does not cut it halfway, and this node stopping fails the call. What `work`
        raises (an Exception) is raised to the caller."""
        nursery = self._nursery
        if nursery is None:
            raise TransportError(f"node {self.self_id} is stopping")
        if not self._slots.try_take(caller_id):
            raise TransportError(f"node {self.self_id} is busy ({self._slots.per_peer} calls in flight)")
        done = trio.Event()
        outcome: list[T] = []
        failure: list[Exception] = []

        async def run() -> None:
            try:
                try:
                    outcome.append(await work())
                except Exception as exc:
                    failure.append(exc)
            finally:
                self._slots.give_back(caller_id)
                done.set()

        nursery.start_soon(run)
        await done.wait()
        if failure:
            raise failure[0]
        if not outcome:
            raise TransportError(f"the call to {self.self_id} broke: the node is stopping")
        return outcome[0]

    async def _caller(self, peer_id: str) -> MuxCaller | None:
        """The mux stream to `peer_id`, opened if there is none; None where the peer does not speak it."""
        caller = self._callers.get(peer_id)
        if caller is not None and not caller.broken:
            return caller
        lock = self._opening.setdefault(peer_id, trio.Lock())
        async with lock:
            caller = self._callers.get(peer_id)
            if caller is not None and not caller.broken:
                return caller
            if self._per_call_until.get(peer_id, 0.0) > trio.current_time():
                return None
            try:
                stream = await self._host.open_stream(peer_id, MUX_PROTOCOL)
            except UnsupportedProtocolError:
                log.info("%s does not speak %s: calls to it go one stream each", peer_id, MUX_PROTOCOL)
                self._per_call_until[peer_id] = trio.current_time() + PER_CALL_RECHECK
                return None
            caller = MuxCaller(stream, max_frame=self._host.max_frame, write_timeout=self._host.read_timeout,
                               on_broken=self._forget)
            try:
                if self._nursery is None:
                    raise TransportError(f"the transport of {self.self_id} is stopping")
                await self._nursery.start(caller.run)
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.reset()
                raise
            self._callers[peer_id] = caller
        return caller

    def mux_caller(self, peer_id: str) -> MuxCaller | None:
        """The live mux stream of our calls to `peer_id`, if there is one."""
        return self._callers.get(peer_id)

    def _forget(self, caller: MuxCaller) -> None:
        if self._callers.get(caller.peer_id) is caller:
            del self._callers[caller.peer_id]
        log.debug("mux stream to %s closed: %s", caller.peer_id, caller.broken)

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
