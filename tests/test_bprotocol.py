"""bprotocol messages and the per-request boundary: every bad frame gets an error reply, nothing crashes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import MAX_MESSAGE_BYTES, decode, encode, error_reply, ok_reply, parse_reply
from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.bprotocol.transport import InMemoryNetwork, typed_handler
from bacalhau.config import NodeConfig
from bacalhau.errors import NotFoundError, ProtocolError, RemoteError, TransportError
from bacalhau.models import DockerSpec, Job, JobSpec, NodeType, new_id
from bacalhau.node import Node, NodeDeps
from bacalhau.p2p.host import P2PHost


def test_messages_round_trip_and_reject_unknown_fields() -> None:
    req = m.AskForBidRequest(execution_id=new_id(), requester_id="mem-0123456789ab",
                             job=Job(spec=JobSpec(docker=DockerSpec(image="x"))))
    assert decode(encode(req), m.AskForBidRequest) == req
    data = json.loads(encode(req))
    data["surprise"] = 1
    with pytest.raises(ProtocolError, match="malformed AskForBidRequest"):
        decode(json.dumps(data).encode(), m.AskForBidRequest)
    with pytest.raises(ProtocolError, match="over the"):
        decode(b"{" + b" " * MAX_MESSAGE_BYTES + b"}", m.Ack)


def test_error_replies_carry_a_code_the_caller_turns_into_an_exception() -> None:
    with pytest.raises(RemoteError) as info:
        parse_reply(error_reply(NotFoundError("no execution 'x' on this node")), m.Ack)
    assert info.value.code == "not_found"
    assert parse_reply(ok_reply(m.Ack()), m.Ack) == m.Ack()
    with pytest.raises(ProtocolError):
        parse_reply(b"not json", m.Ack)


BOOM = "00000000-0000-4000-8000-0000000b0000"   # the execution id the handler fails on


async def _echo(peer: str, req: m.ExecutionRequest) -> m.Ack:
    if req.execution_id == BOOM:
        raise ValueError("handler bug")
    return m.Ack()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_frames_always_get_an_envelope(payload: bytes) -> None:
    handler = typed_handler(m.ExecutionRequest, _echo)
    reply = trio.run(handler, "peer", payload)
    envelope = decode(reply, m.Envelope)
    assert (envelope.result is None) != (envelope.error is None)


async def test_a_handler_that_raises_answers_with_an_internal_error_and_keeps_serving() -> None:
    handler = typed_handler(m.ExecutionRequest, _echo)
    with pytest.raises(RemoteError) as info:
        parse_reply(await handler("p", encode(m.ExecutionRequest(execution_id=BOOM))), m.Ack)
    assert info.value.code == "internal" and "handler bug" in str(info.value)
    assert parse_reply(await handler("p", encode(m.ExecutionRequest(execution_id=new_id()))), m.Ack) == m.Ack()


async def test_compute_node_answers_bad_and_unknown_messages_with_errors(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, node_types=(NodeType.COMPUTE,), engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=net)).run)
        client = net.transport("mem-c11e47000000")
        reply = await client.call(node.node_id, m.BID_ACCEPTED, b'{"execution_id": 5}', timeout=5)
        with pytest.raises(RemoteError, match="bad_request"):
            parse_reply(reply, m.Ack)
        reply = await client.call(node.node_id, m.BID_ACCEPTED, encode(m.ExecutionRequest(execution_id=new_id())), timeout=5)
        with pytest.raises(RemoteError, match="not_found"):
            parse_reply(reply, m.Ack)
        with pytest.raises(TransportError, match="does not speak"):
            await client.call(node.node_id, "/bacalhau/compute/unknown/1.0.0", b"{}", timeout=5)
        # and it still bids afterwards
        job = Job(spec=JobSpec(engine="noop"))
        reply = await client.call(node.node_id, m.ASK_FOR_BID,
                                  encode(m.AskForBidRequest(execution_id=new_id(), requester_id=client.self_id, job=job)), timeout=5)
        assert parse_reply(reply, m.Ack) == m.Ack()
        nursery.cancel_scope.cancel()


async def test_a_real_node_survives_random_truncated_and_oversize_frames_over_libp2p(tmp_path: Path) -> None:
    import random
    import struct

    from bacalhau.p2p.host import P2PHost
    from tests.conftest import node_config

    rng = random.Random(1234)
    tried = 0
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        client = await nursery.start(P2PHost(key_path=tmp_path / "client.key", listen_host="127.0.0.1", listen_port=0,
                                             peers=[node.addrs()[0]], psk=node.swarm_key).run)
        with trio.fail_after(10):
            while node.node_id not in client.connected_peers():
                await trio.sleep(0.05)
        protocols = [m.ASK_FOR_BID, m.BID_ACCEPTED, m.CANCEL, m.ON_BID_COMPLETE, m.ON_RUN_COMPLETE, m.EXECUTION_STATUS]
        for i in range(150):
            proto = protocols[i % len(protocols)]
            kind = i % 3
            if kind == 0:   # random bytes in a well-formed frame: always an error envelope
                payload = rng.randbytes(rng.randrange(0, 300))
                reply = await client.request(node.node_id, proto, payload, timeout=5)
                assert decode(reply, m.Envelope).error is not None
            else:           # a truncated frame, or a length prefix far over the limit
                stream = await client.open_stream(node.node_id, proto)
                if kind == 1:
                    await stream.write(struct.pack(">I", 1000) + rng.randbytes(rng.randrange(0, 999)))
                else:
                    await stream.write(struct.pack(">I", 2**31) + b"{}")
                await stream.close_write()
                assert await stream.read() == b""   # the node ends the stream, nothing else
                await stream.close()
            tried += 1
        # and it still does its job
        ok = await client.request(node.node_id, m.EXECUTION_STATUS, encode(m.ExecutionRequest(execution_id=new_id())), timeout=5)
        assert decode(ok, m.Envelope).error.code == m.ErrorCode.NOT_FOUND
        nursery.cancel_scope.cancel()
    assert tried == 150


async def test_callbacks_and_calls_are_taken_only_from_the_peer_that_owns_the_execution(tmp_path: Path) -> None:
    from bacalhau.models import JobSpec, NoopSpec, RunResult

    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",)),
                                        NodeDeps(network=net)).run)
        job = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(sleep=30)))
        with trio.fail_after(5):
            while not (ex := (await node.requester.store.get_job(job.id)).executions):
                await trio.sleep(0.02)
        intruder = net.transport("mem-1e7d0de70000")
        forged = m.RunComplete(execution_id=ex[0].id, job_id=job.id, node_id=intruder.self_id, result=RunResult(exit_code=0))
        with pytest.raises(RemoteError, match="does not hold execution"):
            parse_reply(await intruder.call(node.node_id, m.ON_RUN_COMPLETE, encode(forged), timeout=5), m.Ack)
        cancel = m.ExecutionReasonRequest(execution_id=ex[0].id, reason="mine now")
        with pytest.raises(RemoteError, match="is not the requester"):
            parse_reply(await intruder.call(node.node_id, m.CANCEL, encode(cancel), timeout=5), m.Ack)
        assert not (await node.requester.store.get_job(job.id, full=False)).state.terminal
        nursery.cancel_scope.cancel()


# -- the mux: small calls on one long-lived stream per peer (bprotocol/mux.py) ------------------------------

TEST_KEY = "6d" * 32


@asynccontextmanager
async def transports(tmp_path: Path, *, server_mux: bool = True) -> AsyncIterator[tuple[P2PTransport, P2PTransport]]:
    """(server, client): two hosts on loopback, connected, each with a running transport."""
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp_path / "a.key", listen_host="127.0.0.1", listen_port=0,
                                        psk=TEST_KEY, pubsub=False).run)
        b = await nursery.start(P2PHost(key_path=tmp_path / "b.key", listen_host="127.0.0.1", listen_port=0,
                                        psk=TEST_KEY, pubsub=False, peers=[a.listen_addrs[0]]).run)
        with trio.fail_after(10):
            while a.peer_id not in b.connected_peers():
                await trio.sleep(0.02)
        server = await nursery.start(P2PTransport(a, mux=server_mux).run)
        client = await nursery.start(P2PTransport(b).run)
        yield server, client
        nursery.cancel_scope.cancel()


async def test_many_concurrent_calls_share_one_mux_stream_and_are_answered_out_of_order(tmp_path: Path) -> None:
    async with transports(tmp_path) as (server, client):
        release = [trio.Event() for _ in range(60)]
        entered = 0

        async def held(peer: str, data: bytes) -> bytes:
            nonlocal entered
            entered += 1
            await release[int(data)].wait()
            return peer.encode() + b":" + data

        server.register("/test/held/1.0.0", held)
        finished: list[int] = []

        async def one(i: int) -> None:
            assert await client.call(server.self_id, "/test/held/1.0.0", b"%d" % i, timeout=20) == \
                client.self_id.encode() + b":%d" % i
            finished.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i)
            with trio.fail_after(10):
                while entered < 60:
                    await trio.sleep(0.01)
            assert server.mux_server is not None and server.mux_server.streams_of(client.self_id) == 1
            caller = client.mux_caller(server.self_id)
            assert caller is not None and caller.in_flight == 60
            for i in reversed(range(60)):          # answered last-asked first
                release[i].set()
                with trio.fail_after(10):
                    while i not in finished:
                        await trio.sleep(0.005)
        assert finished == list(reversed(range(60)))
        assert client.mux_caller(server.self_id) is caller and caller.in_flight == 0


async def test_a_call_that_times_out_fails_alone_and_its_late_answer_is_dropped(tmp_path: Path) -> None:
    async with transports(tmp_path) as (server, client):
        late = trio.Event()

        async def handler(peer: str, data: bytes) -> bytes:
            if data == b"slow":
                await late.wait()
            return b"re:" + data

        server.register("/test/t/1.0.0", handler)
        assert await client.call(server.self_id, "/test/t/1.0.0", b"warm", timeout=10) == b"re:warm"
        caller = client.mux_caller(server.self_id)
        with trio.fail_after(5), pytest.raises(TransportError, match="timed out after 0.3s"):
            await client.call(server.self_id, "/test/t/1.0.0", b"slow", timeout=0.3)
        assert await client.call(server.self_id, "/test/t/1.0.0", b"next", timeout=10) == b"re:next"
        late.set()                                  # its answer comes now, to no one
        with trio.fail_after(5):
            while caller is not None and caller.in_flight:
                await trio.sleep(0.01)
        assert await client.call(server.self_id, "/test/t/1.0.0", b"after", timeout=10) == b"re:after"
        assert client.mux_caller(server.self_id) is caller and not caller.broken


async def test_a_handler_that_raises_fails_only_its_own_call_with_the_same_error_type(tmp_path: Path) -> None:
    async with transports(tmp_path) as (server, client):
        async def raw(peer: str, data: bytes) -> bytes:
            if data == b"boom":
                raise ValueError("bug in a raw handler")
            return data

        server.register("/test/raw/1.0.0", raw)
        server.register(m.BID_ACCEPTED, typed_handler(m.ExecutionRequest, _echo))
        proxy_payload = encode(m.ExecutionRequest(execution_id=BOOM))
        answers: list[bytes] = []

        async def fine(i: int) -> None:
            answers.append(await client.call(server.self_id, "/test/raw/1.0.0", b"ok%d" % i, timeout=10))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(fine, i)
            with pytest.raises(ProtocolError, match="bug in a raw handler"):
                await client.call(server.self_id, "/test/raw/1.0.0", b"boom", timeout=10)
            with pytest.raises(RemoteError) as info:    # a typed handler's error keeps its envelope and code
                parse_reply(await client.call(server.self_id, m.BID_ACCEPTED, proxy_payload, timeout=10), m.Ack)
            assert info.value.code == "internal" and "handler bug" in str(info.value)
            with pytest.raises(TransportError, match="does not speak /test/nobody/1.0.0"):
                await client.call(server.self_id, "/test/nobody/1.0.0", b"?", timeout=10)
        assert sorted(answers) == sorted(b"ok%d" % i for i in range(20))
        with pytest.raises(ProtocolError, match="over the"):   # too big to send: refused here, alone
            await client.call(server.self_id, "/test/raw/1.0.0", b"x" * (4 * 1024 * 1024 + 1), timeout=10)
        caller = client.mux_caller(server.self_id)
        assert caller is not None and not caller.broken
        assert await client.call(server.self_id, "/test/raw/1.0.0", b"fine", timeout=10) == b"fine"


async def test_an_honest_caller_over_the_in_flight_cap_waits_and_is_never_answered_busy(tmp_path: Path) -> None:
    from bacalhau.bprotocol.mux import MAX_IN_FLIGHT

    async with transports(tmp_path) as (server, client):
        running = most = 0
        go = trio.Event()

        async def held(peer: str, data: bytes) -> bytes:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await go.wait()
            running -= 1
            return data

        server.register("/test/held/1.0.0", held)
        calls = MAX_IN_FLIGHT + 72
        answers: list[bytes] = []

        async def one(i: int) -> None:
            answers.append(await client.call(server.self_id, "/test/held/1.0.0", b"%d" % i, timeout=20))

        async with trio.open_nursery() as nursery:
            for i in range(calls):
                nursery.start_soon(one, i)
            with trio.fail_after(10):
                while running < MAX_IN_FLIGHT:
                    await trio.sleep(0.01)
            go.set()
        assert sorted(answers) == sorted(b"%d" % i for i in range(calls))
        assert most == MAX_IN_FLIGHT


async def test_a_broken_mux_stream_fails_its_calls_and_the_next_call_opens_another(tmp_path: Path) -> None:
    from libp2p.peer.id import ID

    async with transports(tmp_path) as (server, client):
        hold = trio.Event()

        async def handler(peer: str, data: bytes) -> bytes:
            if data == b"hold":
                await hold.wait()
            return data

        server.register("/test/h/1.0.0", handler)
        assert await client.call(server.self_id, "/test/h/1.0.0", b"one", timeout=10) == b"one"
        first = client.mux_caller(server.self_id)
        assert first is not None
        failed: list[Exception] = []

        async def held_call() -> None:
            try:
                await client.call(server.self_id, "/test/h/1.0.0", b"hold", timeout=30)
            except TransportError as exc:
                failed.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_call)
                while first.in_flight < 1:
                    await trio.sleep(0.01)
                await server._host._host.disconnect(ID.from_base58(client.self_id))
        assert len(failed) == 1 and "broke" in str(failed[0])
        assert first.broken
        with trio.fail_after(10):   # the client's host redials; the call opens a new mux stream
            assert await client.call(server.self_id, "/test/h/1.0.0", b"two", timeout=10) == b"two"
        second = client.mux_caller(server.self_id)
        assert second is not None and second is not first and not second.broken


async def test_handlers_see_the_peer_of_the_connection(tmp_path: Path) -> None:
    async with transports(tmp_path) as (server, client):
        seen: list[str] = []

        async def who(peer: str, data: bytes) -> bytes:
            seen.append(peer)
            return b""

        server.register("/test/who/1.0.0", who)
        # a payload that names another peer changes nothing: the frame has no peer field
        await client.call(server.self_id, "/test/who/1.0.0", server.self_id.encode(), timeout=10)
        assert client.mux_caller(server.self_id) is not None
        assert seen == [client.self_id]


async def test_a_peer_without_the_mux_gets_a_stream_per_call(tmp_path: Path) -> None:
    async with transports(tmp_path, server_mux=False) as (server, client):
        async def echo(peer: str, data: bytes) -> bytes:
            return peer.encode() + data

        server.register("/test/echo/1.0.0", echo)
        for _ in range(3):
            assert await client.call(server.self_id, "/test/echo/1.0.0", b"!", timeout=10) == \
                client.self_id.encode() + b"!"
        assert client.mux_caller(server.self_id) is None


KILLABLE_SERVER = """
import sys
from pathlib import Path

import trio

from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.p2p.host import P2PHost


async def main() -> None:
    async with trio.open_nursery() as nursery:
        host = await nursery.start(P2PHost(key_path=Path(sys.argv[1]), listen_host="127.0.0.1", listen_port=0,
                                           psk=sys.argv[2], pubsub=False).run)
        transport = await nursery.start(P2PTransport(host).run)

        async def hang(peer: str, data: bytes) -> bytes:
            await trio.sleep_forever()
            return b""

        transport.register("/test/hang/1.0.0", hang)
        print(host.listen_addrs[0], flush=True)


trio.run(main)
"""


async def test_a_peer_killed_mid_call_fails_all_its_calls_at_once(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_SERVER, str(tmp_path / "victim.key"),  # noqa: ASYNC220
                             TEST_KEY], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        addr = (await trio.to_thread.run_sync(proc.stdout.readline)).decode().strip()
        async with trio.open_nursery() as nursery:
            host = await nursery.start(P2PHost(key_path=tmp_path / "c.key", listen_host="127.0.0.1", listen_port=0,
                                               psk=TEST_KEY, pubsub=False).run)
            client = await nursery.start(P2PTransport(host).run)
            victim = await host.connect(addr)
            failed: list[tuple[float, BaseException]] = []

            async def one() -> None:
                try:
                    await client.call(victim, "/test/hang/1.0.0", b"?", timeout=60)
                except TransportError as exc:
                    failed.append((trio.current_time(), exc))

            async with trio.open_nursery() as calls:
                for _ in range(20):
                    calls.start_soon(one)
                with trio.fail_after(10):
                    while (caller := client.mux_caller(victim)) is None or caller.in_flight < 20:
                        await trio.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                with trio.fail_after(10):        # far less than the calls' 60 s
                    while len(failed) < 20:
                        await trio.sleep(0.01)
            assert all("broke" in str(exc) for _, exc in failed), failed[0][1]
            assert max(t for t, _ in failed) - killed_at < 10
            assert client.mux_caller(victim) is None    # the next call opens a new stream
            nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait()


async def test_a_cluster_of_a_mux_node_and_one_without_the_mux_runs_jobs(tmp_path: Path) -> None:
    """A requester with the mux, a compute node with it and one without (as an older node): calls to and from
    the old one go a stream per call, those of the new one on the mux."""
    from bacalhau.bprotocol.p2p_transport import P2PTransport
    from bacalhau.models import JobState, NoopSpec
    from tests.conftest import node_config

    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "req", node_types=(NodeType.REQUESTER,),
                                                   serve_api=False)).run)
        old = await nursery.start(Node(node_config(tmp_path / "old", node_types=(NodeType.COMPUTE,),
                                                   serve_api=False, engines=("noop",), peers=(req.addrs()[0],),
                                                   labels={"name": "old"}, bprotocol_mux=False)).run)
        new = await nursery.start(Node(node_config(tmp_path / "new", node_types=(NodeType.COMPUTE,),
                                                   serve_api=False, engines=("noop",), peers=(req.addrs()[0],),
                                                   labels={"name": "new"})).run)
        assert req.requester is not None
        with trio.fail_after(20):
            await req.requester.nodes.wait_for(old.node_id)
            await req.requester.nodes.wait_for(new.node_id)
        for name in ("old", "new", "old", "new"):
            job = await req.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout="hi"),
                                                     node_selector=f"name={name}"))
            with trio.fail_after(20):
                while not (done := await req.requester.store.get_job(job.id, full=False)).state.terminal:
                    await req.requester.wait_for_change(job.id, 1)
            assert done.state == JobState.COMPLETED
        assert isinstance(req.transport, P2PTransport) and req.transport.mux_caller(old.node_id) is None
        assert isinstance(old.transport, P2PTransport) and old.transport.mux_server is None
        assert req.transport.mux_caller(new.node_id) is not None
        assert isinstance(new.transport, P2PTransport) and new.transport.mux_caller(req.node_id) is not None
        nursery.cancel_scope.cancel()
