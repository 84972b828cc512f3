"""The nodes of one devstack process call each other's bprotocol handlers and hear each other's NodeInfo
in-process (bprotocol/transport.py InProcessPeers), not over loopback libp2p. That shortcut must not change what
a caller sees (frame limits, BUSY under a flood, a failing handler, a callee that stops), must not let a peer
outside the process into it, and must not blind a node outside the process to the devstack's nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol.mux import MAX_IN_FLIGHT
from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.bprotocol.transport import InProcessPeers
from bacalhau.errors import ProtocolError, TransportError
from bacalhau.models import NodeType
from bacalhau.node import Node, NodeDeps
from bacalhau.p2p.host import P2PHost
from tests.conftest import TEST_SWARM_KEY, node_config

PROTO = "/test/echo/1.0.0"


@asynccontextmanager
async def pair(tmp_path: Path, neighbours: InProcessPeers) -> AsyncIterator[tuple[P2PTransport, P2PTransport, trio.Nursery]]:
    """Two transports of one process on real libp2p hosts, the second's in a nursery of its own (to stop it)."""
    async with trio.open_nursery() as nursery:
        host_a: P2PHost = await nursery.start(P2PHost(key_path=tmp_path / "a.key", listen_host="127.0.0.1",
                                                      listen_port=0, psk=TEST_SWARM_KEY, pubsub=False).run)
        a: P2PTransport = await nursery.start(P2PTransport(host_a, neighbours=neighbours).run)
        inner = trio.open_nursery()
        b_nursery = await inner.__aenter__()
        try:
            host_b: P2PHost = await b_nursery.start(P2PHost(
                key_path=tmp_path / "b.key", listen_host="127.0.0.1", listen_port=0, peers=[host_a.listen_addrs[0]],
                psk=TEST_SWARM_KEY, pubsub=False).run)
            b: P2PTransport = await b_nursery.start(P2PTransport(host_b, neighbours=neighbours).run)
            yield a, b, b_nursery
        finally:
            b_nursery.cancel_scope.cancel()
            await inner.__aexit__(None, None, None)
            nursery.cancel_scope.cancel()


async def test_in_process_calls_keep_the_wire_semantics(tmp_path: Path) -> None:
    seen: list[str] = []
    gate = trio.Event()

    async def echo(peer_id: str, payload: bytes) -> bytes:
        seen.append(peer_id)
        if payload == b"boom":
            raise ValueError("the handler broke")
        if payload == b"big":
            return b"x" * (b.host.max_frame + 1)
        if payload == b"hold":
            await gate.wait()
        return payload

    async with pair(tmp_path, InProcessPeers()) as (a, b, _):
        b.register(PROTO, echo)
        assert await a.call(b.self_id, PROTO, b"hi", timeout=5) == b"hi"
        assert seen == [a.self_id]                       # the handler sees the caller's own id
        assert a.mux_caller(b.self_id) is None           # no libp2p stream was opened for it

        with pytest.raises(ProtocolError, match="the handler broke"):
            await a.call(b.self_id, PROTO, b"boom", timeout=5)
        with pytest.raises(ProtocolError, match="over the"):
            await a.call(b.self_id, PROTO, b"big", timeout=5)
        with pytest.raises(ProtocolError, match="over the"):
            await a.call(b.self_id, PROTO, b"y" * (a.host.max_frame + 1), timeout=5)
        with pytest.raises(TransportError, match="does not speak"):
            await a.call(b.self_id, "/test/none/1.0.0", b"", timeout=5)

        # a flood: MAX_IN_FLIGHT calls held by the callee, the next one is told BUSY, as on the mux
        before = len(seen)
        async with trio.open_nursery() as flood:
            async def hold() -> None:
                assert await a.call(b.self_id, PROTO, b"hold", timeout=10) == b"hold"

            for _ in range(MAX_IN_FLIGHT):
                flood.start_soon(hold)
            with trio.fail_after(5):
                while len(seen) < before + MAX_IN_FLIGHT:
                    await trio.sleep(0.01)
            with pytest.raises(TransportError, match="busy"):
                await a.call(b.self_id, PROTO, b"hi", timeout=5)
            gate.set()
        assert await a.call(b.self_id, PROTO, b"again", timeout=5) == b"again"


async def test_a_caller_that_gives_up_times_out_and_a_stopping_callee_fails_the_call(tmp_path: Path) -> None:
    started = trio.Event()
    finished: list[str] = []

    async def slow(peer_id: str, payload: bytes) -> bytes:
        started.set()
        await trio.sleep(0.5)
        finished.append(peer_id)
        return payload

    async def forever(peer_id: str, payload: bytes) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError

    async with pair(tmp_path, InProcessPeers()) as (a, b, b_nursery):
        b.register(PROTO, slow)
        b.register("/test/forever/1.0.0", forever)
        with pytest.raises(TransportError, match="timed out"):
            await a.call(b.self_id, PROTO, b"x", timeout=0.1)
        with trio.fail_after(5):                 # the handler ran on: the caller's timeout did not cut it
            while not finished:
                await trio.sleep(0.02)

        started = trio.Event()
        async with trio.open_nursery() as n:
            async def stop_b() -> None:
                await started.wait()
                b_nursery.cancel_scope.cancel()
            n.start_soon(stop_b)
            with pytest.raises(TransportError):
                await a.call(b.self_id, "/test/forever/1.0.0", b"x", timeout=10)


async def test_a_peer_outside_the_process_is_not_taken_for_a_neighbour(tmp_path: Path) -> None:
    """A peer of the swarm outside the process (here: a transport not given the process's InProcessPeers) is
    reached over libp2p, and its calls to the devstack's nodes come over libp2p with its own id."""
    neighbours = InProcessPeers()
    async with pair(tmp_path, neighbours) as (a, b, _), trio.open_nursery() as n:
        outside_host: P2PHost = await n.start(P2PHost(key_path=tmp_path / "out.key", listen_host="127.0.0.1",
                                                      listen_port=0, peers=[a.host.listen_addrs[0]],
                                                      psk=TEST_SWARM_KEY, pubsub=False).run)
        outside: P2PTransport = await n.start(P2PTransport(outside_host).run)
        got: list[str] = []

        async def echo(peer_id: str, payload: bytes) -> bytes:
            got.append(peer_id)
            return payload

        a.register(PROTO, echo)
        assert await outside.call(a.self_id, PROTO, b"hi", timeout=10) == b"hi"
        assert got == [outside.self_id]
        assert outside.mux_caller(a.self_id) is not None        # it came over libp2p
        assert set(neighbours.transports) == {a.self_id, b.self_id}
        n.cancel_scope.cancel()


async def test_an_outside_requester_still_hears_every_devstack_node(tmp_path: Path) -> None:
    """The devstack's nodes gossip NodeInfo over pubsub only while a node outside the process is connected; an
    outside requester must still see all of them (not only the one it dialled)."""
    neighbours = InProcessPeers()
    async with trio.open_nursery() as nursery:
        first = await nursery.start(Node(node_config(tmp_path / "n0", engines=("noop",), serve_api=False),
                                         NodeDeps(neighbours=neighbours)).run)
        second = await nursery.start(Node(node_config(tmp_path / "n1", engines=("noop",),
                                                      node_types=(NodeType.COMPUTE,), peers=(first.addrs()[0],)),
                                          NodeDeps(neighbours=neighbours)).run)
        # inside the process, the first hears the second without pubsub
        with trio.fail_after(10):
            while second.node_id not in [i.node_id for i in first.requester.nodes.alive()]:
                await trio.sleep(0.05)
        outside = await nursery.start(Node(node_config(tmp_path / "out", engines=("noop",), serve_api=False,
                                                       peers=(first.addrs()[0],))).run)
        with trio.fail_after(15):
            while not {first.node_id, second.node_id} <= {i.node_id for i in outside.requester.nodes.alive()}:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_a_typed_call_between_nodes_of_the_process_is_answered_as_the_same_call_in_bytes(
        tmp_path: Path) -> None:
    """Devstack nodes hand each other the message object (no JSON): what the caller meets must be what the bytes
    path gives it (the answer, the callee's errors as RemoteError with their code, a message that does not
    validate refused as a bad request, the caller's id, BUSY under a flood), and no libp2p stream is opened."""
    from bacalhau.bprotocol import messages as m
    from bacalhau.bprotocol.framing import encode, parse_reply
    from bacalhau.bprotocol.proxies import _Proxy
    from bacalhau.bprotocol.transport import typed_handler
    from bacalhau.errors import NotFoundError, RemoteError

    seen: list[str] = []
    gate = trio.Event()
    typed = "/test/typed/1.0.0"

    async def handle(peer_id: str, msg: m.ExecutionRequest) -> m.Ack:
        seen.append(peer_id)
        if msg.execution_id.startswith("0"):
            raise NotFoundError(f"no execution {msg.execution_id}")
        if msg.execution_id.startswith("1"):
            await gate.wait()
        return m.Ack()

    good, missing, held = (f"{d}0000000-0000-4000-8000-000000000000" for d in "a01")
    async with pair(tmp_path, InProcessPeers()) as (a, b, _):
        b.register(typed, typed_handler(m.ExecutionRequest, handle))
        proxy = _Proxy(a, 5)
        in_bytes: list[str] = []            # calls that went the bytes way (the typed ones must not)
        answer_in_bytes = b.answer_neighbour

        async def counted(caller_id: str, protocol_id: str, payload: bytes) -> bytes:
            in_bytes.append(protocol_id)
            return await answer_in_bytes(caller_id, protocol_id, payload)

        b.answer_neighbour = counted        # type: ignore[method-assign]

        async def both(msg: m.ExecutionRequest) -> list[object]:
            out: list[object] = []
            for call in (lambda: proxy._call(b.self_id, typed, msg, m.Ack),
                         lambda: _bytes(a, b.self_id, typed, encode(msg))):
                try:
                    out.append(await call())
                except RemoteError as exc:
                    out.append((type(exc).__name__, exc.code, str(exc)))
            return out

        async def _bytes(t: P2PTransport, peer: str, proto: str, payload: bytes) -> m.Ack:
            return parse_reply(await t.call(peer, proto, payload, timeout=5), m.Ack)

        typed_answer, bytes_answer = await both(m.ExecutionRequest(execution_id=good))
        assert typed_answer == bytes_answer == m.Ack()
        assert seen == [a.self_id, a.self_id]
        assert in_bytes == [typed]          # the proxy's call handed the object over
        typed_error, bytes_error = await both(m.ExecutionRequest(execution_id=missing))
        assert typed_error == bytes_error and typed_error[1] == m.ErrorCode.NOT_FOUND   # type: ignore[index]
        bad = m.ExecutionRequest.model_construct(execution_id="../../etc/passwd")      # never validated
        with pytest.raises(RemoteError) as caught:
            await proxy._call(b.self_id, typed, bad, m.Ack)
        assert caught.value.code == m.ErrorCode.BAD_REQUEST
        assert len(seen) == 4                    # the bad one never reached the handler
        assert a.mux_caller(b.self_id) is None   # nothing went over libp2p

        async with trio.open_nursery() as flood:
            async def hold() -> None:
                await proxy._call(b.self_id, typed, m.ExecutionRequest(execution_id=held), m.Ack)

            for _ in range(MAX_IN_FLIGHT):
                flood.start_soon(hold)
            with trio.fail_after(5):
                while len(seen) < 4 + MAX_IN_FLIGHT:
                    await trio.sleep(0.01)
            with pytest.raises(TransportError, match="busy"):
                await proxy._call(b.self_id, typed, m.ExecutionRequest(execution_id=good), m.Ack)
            gate.set()
