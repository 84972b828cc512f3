"""How bprotocol messages travel: over libp2p, in memory (tests), or straight to this node's own endpoint.

A Transport moves opaque payloads; `typed_handler` is the per-request boundary that turns a typed handler
into one that always answers with an Envelope, whatever the handler raised.

A node calling itself (its requester telling its compute node, and back: two to six calls a job) skips the bytes:
`LocalTransport.call_self` hands the message object to the typed handler (`TypedHandler.answer`). What a remote
caller meets, it meets too: the request is validated against the handler's model (a shallow copy: its top-level
fields checked again, so a message built with model_construct or changed after it was built is refused as
BAD_REQUEST), the handler sees this node as the caller, an error comes back as the RemoteError with the code
and message the Envelope would carry, and the reply is checked against the model the caller expects. Nested
models (a Job, a RunResult) are shared, not copied: they were validated when built, and no handler changes a
request's parts (a JSON round trip cost ~48 us for an AskForBidRequest, a revalidation of its dict ~9 us;
re-validating from a dump cost more than JSON: 61 us).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import trio
from pydantic import BaseModel, ValidationError

from bacalhau.bprotocol.framing import decode, encode, error_reply, ok_reply, parse_reply
from bacalhau.errors import ProtocolError, TransportError, UnsupportedProtocolError

if TYPE_CHECKING:
    from bacalhau.bprotocol.p2p_transport import P2PTransport

log = logging.getLogger(__name__)

RawHandler = Callable[[str, bytes], Awaitable[bytes]]
RawStreamHandler = Callable[[str, bytes], AsyncIterator[bytes]]
Req = TypeVar("Req", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
# a typed handler in a list of (protocol, model, handler): its model is known only at run time
AnyModelHandler = Callable[[str, Any], Awaitable[BaseModel]]


class Transport(Protocol):
    self_id: str

    def register(self, protocol_id: str, handler: RawHandler) -> None: ...

    def register_stream(self, protocol_id: str, handler: RawStreamHandler) -> None: ...

    async def call(self, peer_id: str, protocol_id: str, payload: bytes, *, timeout: float) -> bytes: ...

    def stream(
        self, peer_id: str, protocol_id: str, payload: bytes
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class TypedHandler(Generic[Req]):
    """A raw handler (bytes in, an Envelope's bytes out) that can also be handed the request object by its own
    node (`answer`): the same boundary either way."""

    def __init__(self, model: type[Req], fn: Callable[[str, Req], Awaitable[BaseModel]]) -> None:
        self.model = model
        self._fn = fn

    async def __call__(self, peer_id: str, payload: bytes) -> bytes:
        try:
            request = decode(payload, self.model)
            return ok_reply(await self._fn(peer_id, request))
        except trio.Cancelled:
            raise
        except Exception as exc:  # the per-request boundary: every error becomes a wire error
            self._log(exc)
            return error_reply(exc)

    async def answer(self, peer_id: str, msg: BaseModel, reply: type[Rep]) -> Rep:
        """The typed call: `msg` checked as `decode` checks bytes; an error raised as parse_reply raises the
        Envelope's (RemoteError with its code), so a caller cannot tell this from the byte path."""
        try:
            request = _revalidated(self.model, msg)
            result = await self._fn(peer_id, request)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._log(exc)
            parse_reply(error_reply(exc), reply)     # raises the RemoteError the caller would see
            raise AssertionError("unreachable") from exc
        return _revalidated(reply, result, " reply")

    def _log(self, exc: Exception) -> None:
        if not isinstance(exc, ProtocolError):
            log.debug("handler for %s failed: %s", self.model.__name__, exc, exc_info=True)


def _revalidated(model: type[M], msg: BaseModel, what: str = "") -> M:
    """A new `model` from `msg`'s fields, validated as if it had come as JSON (a foreign type is refused)."""
    if not isinstance(msg, model):
        raise ProtocolError(f"malformed {model.__name__}{what}: got a {type(msg).__name__}")
    try:
        return model.__pydantic_validator__.validate_python(msg.__dict__)   # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ProtocolError(f"malformed {model.__name__}{what}: {exc.errors()[0].get('msg', exc)}") from None


def typed_handler(model: type[Req], fn: Callable[[str, Req], Awaitable[BaseModel]]) -> TypedHandler[Req]:
    return TypedHandler(model, fn)


class LocalTransport:
    """Handlers of this node, reachable without a socket. Base of the other transports."""

    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.handlers: dict[str, RawHandler] = {}
        self.stream_handlers: dict[str, RawStreamHandler] = {}

    def register(self, protocol_id: str, handler: RawHandler) -> None:
        self.handlers[protocol_id] = handler

    def register_stream(self, protocol_id: str, handler: RawStreamHandler) -> None:
        self.stream_handlers[protocol_id] = handler

    async def call_local(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        handler = self.handlers.get(protocol_id)
        if handler is None:
            raise UnsupportedProtocolError(f"node {self.self_id} does not speak {protocol_id}")
        return await handler(peer_id, payload)

    @asynccontextmanager
    async def stream_local(self, peer_id: str, protocol_id: str, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        handler = self.stream_handlers.get(protocol_id)
        if handler is None:
            raise UnsupportedProtocolError(f"node {self.self_id} does not speak {protocol_id}")
        gen = handler(peer_id, payload)
        try:
            yield gen
        finally:
            await gen.aclose()  # type: ignore[attr-defined]

    async def call(self, peer_id: str, protocol_id: str, payload: bytes, *, timeout: float) -> bytes:
        if peer_id != self.self_id:
            raise TransportError(f"peer {peer_id} is not reachable from a local-only transport")
        with trio.fail_after(timeout):
            return await self.call_local(peer_id, protocol_id, payload)

    async def call_self(self, protocol_id: str, msg: BaseModel, reply: type[Rep], *, timeout: float) -> Rep:
        """A call of this node to itself, without the bytes where its handler is typed (see the module's
        docstring); trio.TooSlowError after `timeout`, as `call`."""
        handler = self.handlers.get(protocol_id)
        if not isinstance(handler, TypedHandler):
            return parse_reply(await self.call(self.self_id, protocol_id, encode(msg), timeout=timeout), reply)
        with trio.fail_after(timeout):
            return await handler.answer(self.self_id, msg, reply)

    def stream(self, peer_id: str, protocol_id: str, payload: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if peer_id != self.self_id:
            raise TransportError(f"peer {peer_id} is not reachable from a local-only transport")
        return self.stream_local(self.self_id, protocol_id, payload)


class InProcessPeers:
    """Nodes that share this process (devstack): their bprotocol calls to each other go straight to the callee's
    handlers (P2PTransport.answer_neighbour) instead of through noise and yamux over loopback; the callee is
    the one registered under the peer id, so the caller's id is as sure as the one a secure channel proves.
    Their NodeInfo gossip reaches each other through `gossip` (node.py). Streams and everything else stay on
    libp2p."""

    def __init__(self) -> None:
        self.transports: dict[str, P2PTransport] = {}    # peer id -> its running transport
        self.gossip: list[Callable[[Any], None]] = []   # the NodeInfo topic among them, its sender trusted

    def publish(self, sender: str, info: Any) -> None:
        """`info` is the NodeInfo of `sender`, from the sender itself (no check of who says it is needed)."""
        for deliver in list(self.gossip):
            deliver(info)


class InMemoryNetwork:
    """Many nodes in one process, wired without sockets: requester and compute logic tested alone.

    For simulations (bacalhau/testing/sim.py) a call can take `latency` seconds each way (plus up to `jitter`),
    and its request or its reply can be lost with probability `loss` each: the caller then sees its timeout,
    as on a real network (a lost reply after the handler ran, too). Gossip is neither delayed nor lost.
    """

    def __init__(self, *, latency: float = 0.0, jitter: float = 0.0, loss: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.nodes: dict[str, InMemoryTransport] = {}
        self.down: set[str] = set()
        self.cut: set[str] = set()
        self.subscribers: list[Callable[[str, bytes], None]] = []   # the gossip topic: (sender, data)
        self._went_down: dict[str, trio.Event] = {}
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.rng = rng or random.Random()
        self.calls = 0          # calls made, and those of them lost on the way (either way)
        self.lost = 0
        # (caller, callee, protocol id) -> lose this call's "request" or its "reply" (after the handler ran),
        # or "" for neither: a test's chosen message
        self.drop: Callable[[str, str, str], str] | None = None

    def take_down(self, node_id: str) -> None:
        """Simulate a node's death: calls to it and from it fail, and streams from it break, as a reset would."""
        self.down.add(node_id)
        self.went_down(node_id).set()

    def isolate(self, node_id: str) -> None:
        """Cut the node off, alive: its calls and calls to it fail, its gossip reaches nobody (and a subscriber
        that is cut off checks `cut` for itself to hear none)."""
        self.cut.add(node_id)

    def reconnect(self, node_id: str) -> None:
        self.cut.discard(node_id)

    def bring_back(self, node_id: str) -> None:
        """The node is reachable again (a restarted process: its transport keeps its handlers)."""
        self.down.discard(node_id)
        self._went_down.pop(node_id, None)

    async def _hop(self) -> None:
        """One way across the network: the latency, and a message lost is never delivered."""
        delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
        if delay:
            await trio.sleep(delay)
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            await trio.sleep_forever()     # the caller's timeout ends it

    def went_down(self, node_id: str) -> trio.Event:
        return self._went_down.setdefault(node_id, trio.Event())

    def publish(self, sender: str, data: bytes) -> None:
        if sender in self.cut:
            return
        for deliver in self.subscribers:
            deliver(sender, data)

    def transport(self, node_id: str) -> InMemoryTransport:
        t = InMemoryTransport(node_id, self)
        self.nodes[node_id] = t
        return t


class InMemoryTransport(LocalTransport):
    def __init__(self, self_id: str, network: InMemoryNetwork) -> None:
        super().__init__(self_id)
        self._network = network

    def _peer(self, peer_id: str) -> InMemoryTransport:
        peer = self._network.nodes.get(peer_id)
        # a node taken down is dead both ways: its tasks that live on in this process send nothing either
        if peer is None or {peer_id, self.self_id} & (self._network.down | self._network.cut):
            raise TransportError(f"peer {peer_id} is not reachable")
        return peer

    async def call(self, peer_id: str, protocol_id: str, payload: bytes, *, timeout: float) -> bytes:
        peer = self._peer(peer_id)
        net = self._network
        net.calls += 1
        with trio.fail_after(timeout):
            if not (net.latency or net.jitter or net.loss or net.drop):
                return await peer.call_local(self.self_id, protocol_id, payload)
            lose = net.drop(self.self_id, peer_id, protocol_id) if net.drop is not None else ""
            if lose == "request":
                net.lost += 1
                await trio.sleep_forever()
            await net._hop()
            # the handler runs on the peer: the caller giving up does not cut it halfway (as over a socket,
            # where a timed-out caller's reset is seen only when the reply is written); bounded all the same
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 4 * timeout) as bound:
                reply = await self._peer(peer_id).call_local(self.self_id, protocol_id, payload)
            if bound.cancelled_caught:
                raise TransportError(f"{protocol_id} to {peer_id}: its handler ran past {4 * timeout:g}s")
            if lose == "reply":
                net.lost += 1
                await trio.sleep_forever()
            await net._hop()
            return reply

    async def call_self(self, protocol_id: str, msg: BaseModel, reply: type[Rep], *, timeout: float) -> Rep:
        """Through the network like any call: a simulation's latency and losses apply to a node's self-calls."""
        return parse_reply(await self.call(self.self_id, protocol_id, encode(msg), timeout=timeout), reply)

    @asynccontextmanager
    async def stream(self, peer_id: str, protocol_id: str, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._peer(peer_id).stream_local(self.self_id, protocol_id, payload) as chunks:
            yield _BreakOnDeath(chunks, self._network.went_down(peer_id), peer_id)


class _BreakOnDeath:
    """Chunks of an in-memory stream that end with TransportError when the sending node is taken down."""

    def __init__(self, chunks: AsyncIterator[bytes], down: trio.Event, peer_id: str) -> None:
        self._chunks = chunks
        self._down = down
        self._peer_id = peer_id

    def __aiter__(self) -> _BreakOnDeath:
        return self

    async def __anext__(self) -> bytes:
        result: list[bytes] = []
        ended = False

        async def pull(cancel: trio.CancelScope) -> None:
            nonlocal ended
            try:
                result.append(await self._chunks.__anext__())
            except StopAsyncIteration:
                ended = True
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull, nursery.cancel_scope)
            await self._down.wait()
            nursery.cancel_scope.cancel()
        if result:
            return result[0]
        if ended:
            raise StopAsyncIteration
        raise TransportError(f"stream from {self._peer_id} reset: the node went down")
