"""bprotocol messages and the per-request boundary: every bad frame gets an error reply, nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import MAX_MESSAGE_BYTES, decode, encode, error_reply, ok_reply, parse_reply
from bacalhau.bprotocol.transport import InMemoryNetwork, typed_handler
from bacalhau.config import NodeConfig
from bacalhau.errors import NotFoundError, ProtocolError, RemoteError, TransportError
from bacalhau.models import DockerSpec, Job, JobSpec, NodeType, new_id
from bacalhau.node import Node, NodeDeps


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
