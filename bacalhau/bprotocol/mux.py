"""The bprotocol's small calls multiplexed on one long-lived libp2p stream per peer and direction.

A call on a stream of its own costs a stream open and a multistream-select round trip: 2-3 ms of CPU at both
ends on py-libp2p, about nine times a job. On the mux a call is one frame each way on a stream opened once
(and again after it breaks). Result and log streams (register_stream) keep streams of their own.

Wire, inside one libp2p stream of MUX_PROTOCOL that the caller opened (the other side only answers):

    frame     length:u32 body                                  length <= max_frame + MAX_HEAD
    request   0x01 call_id:u32 protocol_len:u8 protocol payload
    response  0x02 call_id:u32 status:u8 payload

    status    0 OK        payload: the handler's reply (an Envelope: a handler's error keeps its code)
              1 UNKNOWN   no handler of that protocol here                      -> UnsupportedProtocolError
              2 BUSY      the peer has MAX_IN_FLIGHT calls being answered here  -> TransportError
              3 FAILED    the handler raised, or its reply was over the limit   -> ProtocolError
                          (payload: one line of UTF-8)

Call ids are the caller's, unique among its calls in flight on the stream; answers come in any order. The
peer id a handler is given is the one of the stream's connection (authenticated by Noise), never one from a
frame. A frame that does not parse, or is over the limit, resets the stream: the calls in flight on it fail at
once, as do those of a stream that ends or breaks. A call that times out fails alone (its answer, when it
comes, is dropped).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from bacalhau.bprotocol.transport import RawHandler
from bacalhau.errors import ProtocolError, TransportError, UnsupportedProtocolError, first_leaf

if TYPE_CHECKING:
    from bacalhau.p2p.host import P2PStream

log = logging.getLogger(__name__)

MUX_PROTOCOL = "/bacalhau/mux/1.0.0"
MAX_IN_FLIGHT = 128           # calls of one peer answered at once here (its mux and per-call streams together)
MAX_STREAMS_PER_PEER = 4      # mux streams a peer may hold open to us; ours open one
MAX_HEAD = 1 + 4 + 1 + 255    # kind, call id, protocol length and protocol: a frame's bytes besides its payload
WRITE_BATCH = 256 * 1024      # frames queued together go out in one write up to this size
READ_CHUNK = 256 * 1024

REQUEST, RESPONSE = 1, 2
OK, UNKNOWN, BUSY, FAILED = 0, 1, 2, 3
_LENGTH = struct.Struct(">I")
_REQ = struct.Struct(">IBIB")      # length, kind, call id, protocol length
_RESP = struct.Struct(">IBIB")     # length, kind, call id, status


def request_frame(call_id: int, protocol_id: str, payload: bytes) -> bytes:
    proto = protocol_id.encode()
    if len(proto) > 255:
        raise ProtocolError(f"protocol id {protocol_id[:80]!r} is over 255 bytes")
    return _REQ.pack(6 + len(proto) + len(payload), REQUEST, call_id, len(proto)) + proto + payload


def response_frame(call_id: int, status: int, payload: bytes) -> bytes:
    return _RESP.pack(6 + len(payload), RESPONSE, call_id, status) + payload


def parse_request(body: bytes) -> tuple[int, str, bytes]:
    if len(body) < 6 or body[0] != REQUEST:
        raise ProtocolError("mux frame is not a request")
    call_id, n = struct.unpack_from(">IB", body, 1)
    if len(body) < 6 + n:
        raise ProtocolError("mux request shorter than its protocol id")
    try:
        protocol = body[6:6 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("mux request with a protocol id that is not UTF-8") from None
    return call_id, protocol, body[6 + n:]


def parse_response(body: bytes) -> tuple[int, int, bytes]:
    if len(body) < 6 or body[0] != RESPONSE or body[5] > FAILED:
        raise ProtocolError("mux frame is not a response")
    call_id, status = struct.unpack_from(">IB", body, 1)
    return call_id, status, body[6:]


class FrameReader:
    """Frames off a stream, read in big chunks. Between frames a read waits as long as the peer is silent;
    a frame once begun must arrive within the stream's read timeout (a peer trickling bytes is cut off)."""

    def __init__(self, stream: P2PStream, max_body: int) -> None:
        self._stream = stream
        self._max_body = max_body
        self._buf = bytearray()
        self._pos = 0

    async def next(self) -> bytes | None:
        """The next frame's body; None where the stream ended cleanly between frames."""
        while len(self._buf) - self._pos < 4:
            if not await self._fill(idle=len(self._buf) == self._pos):
                if len(self._buf) == self._pos:
                    return None
                raise ProtocolError("mux stream ended inside a frame")
        (length,) = _LENGTH.unpack_from(self._buf, self._pos)
        if length > self._max_body:
            raise ProtocolError(f"mux frame of {length} bytes is over the {self._max_body} limit")
        end = self._pos + 4 + length
        while len(self._buf) < end:
            if not await self._fill(idle=False):
                raise ProtocolError("mux stream ended inside a frame")
        body = bytes(self._buf[self._pos + 4:end])
        if end == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif end > READ_CHUNK:
            del self._buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return body

    async def _fill(self, *, idle: bool) -> bool:
        self._stream.set_read_timeout(None if idle else -1.0)
        chunk = await self._stream.read(READ_CHUNK)
        self._buf += chunk
        return bool(chunk)


class FrameWriter:
    """The one task that writes a stream (yamux streams take no concurrent writers): frames queued by many
    tasks, written together. A write the peer does not take within `timeout` breaks the stream."""

    def __init__(self, stream: P2PStream, capacity: int, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self.send, self._receive = trio.open_memory_channel[bytes](capacity)

    async def run(self) -> None:
        async with self._receive:
            async for first in self._receive:
                parts, size = [first], len(first)
                while size < WRITE_BATCH:
                    try:
                        frame = self._receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    parts.append(frame)
                    size += len(frame)
                try:
                    with trio.fail_after(self._timeout):
                        await self._stream.write(parts[0] if len(parts) == 1 else b"".join(parts))
                except trio.TooSlowError:
                    raise TransportError(f"{self._stream.remote_peer} took no data for {self._timeout:g}s") from None


class PeerSlots:
    """Calls of each peer being answered at once, whichever stream they came on: a peer that floods us gets
    BUSY on the mux (a per-call stream waits its turn) and never more than `per_peer` handler tasks."""

    def __init__(self, per_peer: int = MAX_IN_FLIGHT) -> None:
        self.per_peer = per_peer
        self._slots: dict[str, trio.Semaphore] = {}

    def _of(self, peer_id: str) -> trio.Semaphore:
        sem = self._slots.get(peer_id)
        if sem is None:
            sem = self._slots[peer_id] = trio.Semaphore(self.per_peer)
        return sem

    def try_take(self, peer_id: str) -> bool:
        try:
            self._of(peer_id).acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    async def take(self, peer_id: str) -> None:
        await self._of(peer_id).acquire()

    def give_back(self, peer_id: str) -> None:
        sem = self._slots[peer_id]
        sem.release()
        if sem.value == self.per_peer and not sem.statistics().tasks_waiting:
            del self._slots[peer_id]

    def in_use(self, peer_id: str) -> int:
        sem = self._slots.get(peer_id)
        return 0 if sem is None else self.per_peer - sem.value


class MuxServer:
    """Answers the calls of peers' mux streams with this node's registered handlers."""

    def __init__(self, handlers: Mapping[str, RawHandler], slots: PeerSlots, *, max_frame: int,
                 write_timeout: float, max_streams: int = MAX_STREAMS_PER_PEER) -> None:
        self._handlers = handlers
        self._slots = slots
        self._max_frame = max_frame
        self._write_timeout = write_timeout
        self._max_streams = max_streams
        self._streams: dict[str, int] = {}

    def streams_of(self, peer_id: str) -> int:
        return self._streams.get(peer_id, 0)

    async def serve(self, peer_id: str, stream: P2PStream) -> None:
        """One peer's mux stream, until it ends. Raises on a frame that breaks the protocol; the host's
        stream boundary then resets the stream (and only it)."""
        if self._streams.get(peer_id, 0) >= self._max_streams:
            log.info("reset a mux stream of %s: it has %d open already", peer_id, self._max_streams)
            await stream.reset()
            return
        self._streams[peer_id] = self._streams.get(peer_id, 0) + 1
        try:
            # unbuffered: an answer waits in its task, which holds its slot, until written (the writer still
            # takes every answer waiting at once)
            writer = FrameWriter(stream, 0, self._write_timeout)
            reader = FrameReader(stream, self._max_frame + MAX_HEAD)
            async with trio.open_nursery() as outer:
                outer.start_soon(writer.run)
                async with writer.send, trio.open_nursery() as calls:
                    while (body := await reader.next()) is not None:
                        call_id, protocol, payload = parse_request(body)
                        if not self._slots.try_take(peer_id):
                            await writer.send.send(response_frame(
                                call_id, BUSY, f"{self._slots.per_peer} calls in flight".encode()))
                            continue
                        calls.start_soon(self._answer, peer_id, call_id, protocol, payload, writer.send)
            await stream.close()
        finally:
            self._streams[peer_id] -= 1
            if not self._streams[peer_id]:
                del self._streams[peer_id]

    async def _answer(self, peer_id: str, call_id: int, protocol: str, payload: bytes,
                      send: trio.MemorySendChannel[bytes]) -> None:
        """Holds the peer's slot until the answer is queued: a peer that reads no answers gets no more tasks."""
        try:
            try:
                await send.send(await self._answer_frame(peer_id, call_id, protocol, payload))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the stream broke meanwhile: no one to answer
        finally:
            self._slots.give_back(peer_id)

    async def _answer_frame(self, peer_id: str, call_id: int, protocol: str, payload: bytes) -> bytes:
        handler = self._handlers.get(protocol)
        if handler is None:
            return response_frame(call_id, UNKNOWN, b"")
        try:
            reply = await handler(peer_id, payload)
        except Exception as exc:  # the per-request boundary: a raw handler's error fails its call alone
            log.debug("mux handler for %s failed: %r", protocol, exc)
            return response_frame(call_id, FAILED, f"{type(exc).__name__}: {exc}"[:1000].encode())
        if len(reply) > self._max_frame:
            return response_frame(call_id, FAILED, f"reply of {len(reply)} bytes is over the {self._max_frame} "
                                                   "limit".encode())
        return response_frame(call_id, OK, reply)


class _Waiter:
    __slots__ = ("done", "status", "payload", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = OK
        self.payload = b""
        self.error: BaseException | None = None


class MuxCaller:
    """Our calls to one peer on one mux stream we opened. Once its stream fails it is broken for good; the
    transport opens another. It holds at most MAX_IN_FLIGHT calls in flight (a call that timed out holds its
    place until its answer comes), so an honest caller is never answered BUSY."""

    def __init__(self, stream: P2PStream, *, max_frame: int, write_timeout: float,
                 on_broken: Callable[[MuxCaller], None] = lambda caller: None) -> None:
        self.peer_id = stream.remote_peer
        self.broken: str = ""
        self._stream = stream
        self._max_frame = max_frame
        self._writer = FrameWriter(stream, MAX_IN_FLIGHT, write_timeout)
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        self._pending: dict[int, _Waiter] = {}
        self._next_id = 0
        self._on_broken = on_broken

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reason = "it was closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                task_status.started()
                await self._read_answers()
                reason = "the peer ended it"
                nursery.cancel_scope.cancel()
        except* Exception as group:  # the stream's boundary: its calls fail, the node goes on
            reason = str(first_leaf(group))
        finally:
            self._break(reason)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._stream.reset()

    def _break(self, reason: str) -> None:
        self.broken = reason
        self._writer.send.close()
        error = TransportError(f"the mux stream to {self.peer_id} broke: {reason}")
        for waiter in self._pending.values():
            waiter.error = error
            waiter.done.set()
        self._pending.clear()
        self._on_broken(self)

    @property
    def in_flight(self) -> int:
        """Calls sent and not answered yet (timed-out ones included)."""
        return len(self._pending)

    async def _read_answers(self) -> None:
        reader = FrameReader(self._stream, self._max_frame + MAX_HEAD)
        while (body := await reader.next()) is not None:
            call_id, status, payload = parse_response(body)
            waiter = self._pending.pop(call_id, None)
            if waiter is None:
                raise ProtocolError(f"answer to call {call_id}, which is not in flight")
            self._slots.release()
            waiter.status, waiter.payload = status, payload
            waiter.done.set()

    async def call(self, protocol_id: str, payload: bytes) -> bytes:
        """The handler's reply. The caller bounds the time (a cancelled call fails alone)."""
        if len(payload) > self._max_frame:
            raise ProtocolError(f"frame of {len(payload)} bytes is over the {self._max_frame} limit")
        await self._slots.acquire()
        if self.broken:
            self._slots.release()
            raise TransportError(f"the mux stream to {self.peer_id} broke: {self.broken}")
        self._next_id = call_id = (self._next_id + 1) & 0xFFFFFFFF
        waiter = self._pending[call_id] = _Waiter()
        try:
            await self._writer.send.send(request_frame(call_id, protocol_id, payload))
        except BaseException as exc:   # not queued (cancelled, or the stream broke): it holds no place
            if self._pending.pop(call_id, None) is not None:
                self._slots.release()
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                raise TransportError(f"the mux stream to {self.peer_id} broke: {self.broken}") from None
            raise
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        if waiter.status == OK:
            return waiter.payload
        if waiter.status == UNKNOWN:
            raise UnsupportedProtocolError(f"node {self.peer_id} does not speak {protocol_id}")
        if waiter.status == BUSY:
            raise TransportError(f"node {self.peer_id} is busy ({waiter.payload.decode(errors='replace')})")
        raise ProtocolError(f"{protocol_id} on {self.peer_id} failed: {waiter.payload.decode(errors='replace')}")
