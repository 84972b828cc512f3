"""A rogue cluster peer on the bprotocol mux (bprotocol/mux.py): it holds the swarm key, opens mux streams by
hand and writes what it likes on them, or floods calls. Its stream is reset, its calls in flight are bounded,
handlers still see its own peer id, and the node goes on serving everyone else."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import decode, encode, parse_reply
from bacalhau.bprotocol.mux import BUSY, MAX_IN_FLIGHT, MUX_PROTOCOL, OK, parse_response, request_frame
from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.errors import RemoteError
from bacalhau.models import ExecutionState, JobSpec, NoopSpec, RunResult, new_id
from bacalhau.node import Node
from bacalhau.p2p.host import P2PHost, P2PStream
from tests.conftest import TEST_SWARM_KEY, node_config


async def rogue_host(nursery: trio.Nursery, tmp_path: Path, addr: str) -> P2PHost:
    host: P2PHost = await nursery.start(P2PHost(key_path=tmp_path / "rogue.key", listen_host="127.0.0.1",
                                                listen_port=0, peers=[addr], psk=TEST_SWARM_KEY, pubsub=False).run)
    with trio.fail_after(10):
        while not host.connected_peers():
            await trio.sleep(0.02)
    return host


@asynccontextmanager
async def node_and_rogue(tmp_path: Path) -> AsyncIterator[tuple[Node, P2PHost]]:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        yield node, await rogue_host(nursery, tmp_path, node.addrs()[0])
        nursery.cancel_scope.cancel()


async def answers(stream: P2PStream, n: int) -> list[tuple[int, int, bytes]]:
    got = []
    for _ in range(n):
        (length,) = struct.unpack(">I", await stream.read_exactly(4))
        got.append(parse_response(await stream.read_exactly(length)))
    return got


async def test_malformed_and_oversize_mux_frames_reset_only_the_rogues_stream(tmp_path: Path) -> None:
    status = encode(m.ExecutionRequest(execution_id=new_id()))
    bad_frames = {
        "over the size limit": struct.pack(">I", 2**31) + b"\x01",
        "a response sent as a request": struct.pack(">IBIB", 6, 2, 1, 0),
        "a kind that does not exist": struct.pack(">IBIB", 6, 9, 1, 0),
        "shorter than its protocol id": struct.pack(">IBIB", 7, 1, 1, 200) + b"x",
        "a protocol id that is not UTF-8": struct.pack(">IBIB", 8, 1, 1, 2) + b"\xff\xfe",
        "too short for a header": struct.pack(">I", 2) + b"\x01\x00",
    }
    async with node_and_rogue(tmp_path) as (node, rogue):
        for what, frame in bad_frames.items():
            stream = await rogue.open_stream(node.node_id, MUX_PROTOCOL)
            # a good call first: the stream works until the bad frame
            await stream.write(request_frame(7, m.EXECUTION_STATUS, status))
            [(call_id, code, reply)] = await answers(stream, 1)
            assert call_id == 7 and code == OK and decode(reply, m.Envelope).error.code == m.ErrorCode.NOT_FOUND
            await stream.write(frame)
            with trio.fail_after(5):
                assert await stream.read() == b"", what     # reset: nothing more comes
            await stream.close()
        # the rogue's next stream, and everyone else, are served as before
        assert node.requester is not None
        job = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout="still here")))
        with trio.fail_after(15):
            while not (await node.requester.store.get_job(job.id, full=False)).state.terminal:
                await node.requester.wait_for_change(job.id, 1)
        stream = await rogue.open_stream(node.node_id, MUX_PROTOCOL)
        await stream.write(request_frame(1, m.EXECUTION_STATUS, status))
        [(call_id, code, _)] = await answers(stream, 1)
        assert (call_id, code) == (1, OK)


async def test_a_peer_flooding_calls_gets_busy_past_its_cap_and_holds_no_more_handlers(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server_host = await nursery.start(P2PHost(key_path=tmp_path / "s.key", listen_host="127.0.0.1",
                                                  listen_port=0, psk=TEST_SWARM_KEY, pubsub=False).run)
        server = await nursery.start(P2PTransport(server_host).run)
        running = most = 0
        go = trio.Event()

        async def held(peer: str, data: bytes) -> bytes:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await go.wait()
            finally:
                running -= 1
            return b"done"

        server.register("/test/held/1.0.0", held)
        rogue = await rogue_host(nursery, tmp_path, server_host.listen_addrs[0])
        flood = MAX_IN_FLIGHT * 3
        # on the mux, past the cap: BUSY at once, no handler task
        stream = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        await stream.write(b"".join(request_frame(i, "/test/held/1.0.0", b"") for i in range(flood)))
        busy = await answers(stream, flood - MAX_IN_FLIGHT)
        assert {code for _, code, _ in busy} == {BUSY}
        with trio.fail_after(10):    # the handlers given a slot may not all have begun yet
            while running < MAX_IN_FLIGHT:
                await trio.sleep(0.01)
        # more mux streams, or streams of their own, add no handler either
        extra = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        await extra.write(request_frame(1, "/test/held/1.0.0", b""))
        assert [code for _, code, _ in await answers(extra, 1)] == [BUSY]

        async def per_call() -> None:
            try:
                await rogue.request(server.self_id, "/test/held/1.0.0", b"", timeout=30)
            except Exception:
                pass

        async with trio.open_nursery() as calls:
            for _ in range(40):
                calls.start_soon(per_call)
            with trio.fail_after(10):     # each waits for a slot of the rogue's, held by its mux calls
                while server._slots._of(rogue.peer_id).statistics().tasks_waiting < 40:
                    await trio.sleep(0.01)
            assert most == MAX_IN_FLIGHT and running == MAX_IN_FLIGHT
            go.set()
        done = await answers(stream, MAX_IN_FLIGHT)
        assert {code for _, code, _ in done} == {OK}
        assert most == MAX_IN_FLIGHT
        nursery.cancel_scope.cancel()


async def test_owner_checks_hold_over_the_mux_the_peer_is_the_connections(tmp_path: Path) -> None:
    async with node_and_rogue(tmp_path) as (node, rogue_h), trio.open_nursery() as nursery:
        assert node.requester is not None
        rogue = await nursery.start(P2PTransport(rogue_h).run)
        job = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(sleep=30)))
        live = (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING)
        with trio.fail_after(10):
            while not (ex := [e for e in (await node.requester.store.get_job(job.id)).executions if e.state in live]):
                await trio.sleep(0.05)
        execution_id = ex[0].id
        # it speaks for the node that holds the execution: the node_id in the frame is not who is asking
        forged = m.RunComplete(execution_id=execution_id, job_id=job.id, node_id=node.node_id,
                               result=RunResult(exit_code=0))
        with pytest.raises(RemoteError, match="does not hold execution"):
            parse_reply(await rogue.call(node.node_id, m.ON_RUN_COMPLETE, encode(forged), timeout=10), m.Ack)
        cancel = json.dumps({"execution_id": execution_id, "reason": "mine now"}).encode()
        with pytest.raises(RemoteError, match="is not the requester"):
            parse_reply(await rogue.call(node.node_id, m.CANCEL, cancel, timeout=10), m.Ack)
        assert rogue.mux_caller(node.node_id) is not None       # these went over the mux
        assert not (await node.requester.store.get_job(job.id, full=False)).state.terminal
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def quick_server(tmp_path: Path) -> AsyncIterator[tuple[P2PTransport, P2PHost]]:
    """A bare host + transport with a 0.5 s read timeout (the node's is 10 s), and a rogue connected to it."""
    async with trio.open_nursery() as nursery:
        host = await nursery.start(P2PHost(key_path=tmp_path / "s.key", listen_host="127.0.0.1", listen_port=0,
                                           psk=TEST_SWARM_KEY, pubsub=False, read_timeout=0.5).run)
        server = await nursery.start(P2PTransport(host).run)

        async def big(peer: str, data: bytes) -> bytes:
            server.calls += 1   # type: ignore[attr-defined]
            return b"x" * int(data or b"0")

        server.calls = 0   # type: ignore[attr-defined]

        server.register("/test/big/1.0.0", big)
        yield server, await rogue_host(nursery, tmp_path, host.listen_addrs[0])
        nursery.cancel_scope.cancel()


async def test_a_frame_trickled_is_cut_off_while_an_idle_mux_stream_stays(tmp_path: Path) -> None:
    async with quick_server(tmp_path) as (server, rogue):
        idle = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        trickle = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        await trickle.write(struct.pack(">I", 100) + b"\x01\x00")     # a frame begun, never finished
        start = trio.current_time()
        with trio.fail_after(5):
            assert await trickle.read() == b""
        assert trio.current_time() - start >= 0.4
        # the idle one has waited as long, and more: it still answers
        await idle.write(request_frame(3, "/test/big/1.0.0", b"2"))
        assert await answers(idle, 1) == [(3, OK, b"xx")]


async def test_a_peer_that_never_reads_its_answers_loses_its_stream_and_its_slots(tmp_path: Path) -> None:
    async with quick_server(tmp_path) as (server, rogue):
        stream = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        # answers of 1 MiB each, far over what yamux buffers unread, and three times the calls it may have
        flood = 3 * MAX_IN_FLIGHT
        await stream.write(b"".join(request_frame(i, "/test/big/1.0.0", b"1048576") for i in range(flood)))
        assert server.mux_server is not None
        with trio.fail_after(15):   # the calls are taken (the server may not have begun when the write returns)
            while server.calls < MAX_IN_FLIGHT:   # type: ignore[attr-defined]
                await trio.sleep(0.01)
        with trio.fail_after(15):   # the writer gives up (0.5 s here; yamux's own window wait is 5 s)
            while server.mux_server.streams_of(rogue.peer_id) or server._slots.in_use(rogue.peer_id):
                await trio.sleep(0.05)
        # an answer holds its slot until written: the first, taken by the writer, and the slots' worth
        assert server.calls <= MAX_IN_FLIGHT + 1   # type: ignore[attr-defined]
        fresh = await rogue.open_stream(server.self_id, MUX_PROTOCOL)
        await fresh.write(request_frame(1, "/test/big/1.0.0", b"3"))
        assert await answers(fresh, 1) == [(1, OK, b"xxx")]
