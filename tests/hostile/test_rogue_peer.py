"""A rogue cluster peer: it holds the swarm key and speaks the bprotocol with the project's own client (a bare
P2PHost + P2PTransport + ComputeProxy), and gossip with its own pubsub. It must not write or read outside a
node's repo, steer or read another requester's executions, or speak for another node in NodeInfo gossip."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import parse_reply
from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.bprotocol.proxies import ComputeProxy
from bacalhau.compute.logs import LOG_PROTOCOL
from bacalhau.config import NODE_INFO_TOPIC
from bacalhau.errors import RemoteError
from bacalhau.models import ExecutionState, Job, JobSpec, JobState, NodeInfo, NodeType, NoopSpec, new_id
from bacalhau.node import Node
from bacalhau.p2p.host import P2PHost
from tests.conftest import node_config

CRON_LINE = "* * * * * root touch /tmp/bacalhau-owned\n"


@asynccontextmanager
async def rogue_peer(nursery: trio.Nursery, tmp_path: Path, node: Node) -> AsyncIterator[P2PHost]:
    host = await nursery.start(P2PHost(key_path=tmp_path / "rogue.key", listen_host="127.0.0.1", listen_port=0,
                                       peers=[node.addrs()[0]], psk=node.swarm_key).run)
    with trio.fail_after(10):
        while node.node_id not in host.connected_peers():
            await trio.sleep(0.05)
    yield host


async def raw_call(transport: P2PTransport, peer: str, protocol: str, body: dict[str, Any]) -> m.Ack:
    """A message as the rogue writes it: JSON the client-side models would refuse to build."""
    return parse_reply(await transport.call(peer, protocol, json.dumps(body).encode(), timeout=10), m.Ack)


async def wait_for_execution(node: Node, job_id: str, states: set[ExecutionState]) -> str:
    assert node.requester is not None
    with trio.fail_after(15):
        while True:
            job = await node.requester.store.get_job(job_id)
            done = [e for e in job.executions if e.state in states]
            if done:
                return done[0].id
            await trio.sleep(0.05)


def noop_job(stdout: str, sleep: float = 0.0) -> dict[str, Any]:
    return Job(spec=JobSpec(engine="noop", noop=NoopSpec(stdout=stdout, sleep=sleep))).model_dump(mode="json")


async def test_execution_ids_that_are_paths_are_refused_and_nothing_is_written_outside_the_repo(
        tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        async with rogue_peer(nursery, tmp_path, node) as rogue:
            transport = P2PTransport(rogue)
            tag = secrets.token_hex(4)
            outside = tmp_path / f"pwned-{tag}"                     # absolute: the join drops the base
            relative = f"../../x-{tag}"                             # climbs out of <repo>/results
            for execution_id in (str(outside), relative, f"{new_id()}/../../../y-{tag}", new_id().upper()):
                ask = {"execution_id": execution_id, "requester_id": rogue.peer_id, "job": noop_job(CRON_LINE)}
                with pytest.raises(RemoteError) as refused:
                    await raw_call(transport, node.node_id, m.ASK_FOR_BID, ask)
                assert refused.value.code == "bad_request"
                with pytest.raises(RemoteError) as refused:
                    await raw_call(transport, node.node_id, m.BID_ACCEPTED, {"execution_id": execution_id})
                assert refused.value.code == "bad_request"
            # a job whose own id is a path is refused the same way (it labels the job's containers)
            job = noop_job(CRON_LINE) | {"id": "../job"}
            with pytest.raises(RemoteError, match="bad_request"):
                await raw_call(transport, node.node_id, m.ASK_FOR_BID,
                               {"execution_id": new_id(), "requester_id": rogue.peer_id, "job": job})
            # what a noop execution would have written, had any been accepted
            assert not outside.exists()
            assert not (tmp_path / f"x-{tag}").exists() and not (tmp_path / f"y-{tag}").exists()
            # and the node goes on serving its own requester
            assert node.requester is not None
            own = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout="fine")))
            await wait_for_execution(node, own.id, {ExecutionState.COMPLETED})
        nursery.cancel_scope.cancel()


async def test_results_and_logs_go_only_to_the_requester_that_created_the_execution(tmp_path: Path) -> None:
    secret = f"secret-{secrets.token_hex(8)}"
    elsewhere = tmp_path / "elsewhere"          # a directory that looks like a result, outside the repo
    elsewhere.mkdir()
    (elsewhere / "stdout").write_text("not the node's to give\n")
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        assert node.requester is not None
        job = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout=secret)))
        execution_id = await wait_for_execution(node, job.id, {ExecutionState.COMPLETED})
        async with rogue_peer(nursery, tmp_path, node) as rogue:
            transport = P2PTransport(rogue)
            proxy = ComputeProxy(transport, 10)
            got = b""
            with pytest.raises(RemoteError, match="is not the requester"):
                async with proxy.get_result(node.node_id, execution_id, "stdout") as chunks:
                    async for chunk in chunks:
                        got += chunk
            log_request = json.dumps({"execution_id": execution_id, "follow": False}).encode()
            with pytest.raises(RemoteError, match="is not the requester"):
                async with transport.stream(node.node_id, LOG_PROTOCOL, log_request) as chunks:
                    async for chunk in chunks:
                        got += chunk
            # an execution id that is a path reads nothing either
            for item_id in (str(elsewhere), "/dev"):
                body = json.dumps({"execution_id": item_id, "item": "stdout"}).encode()
                with pytest.raises(RemoteError, match="bad_request"):
                    async with transport.stream(node.node_id, m.GET_RESULT, body) as chunks:
                        async for chunk in chunks:
                            got += chunk
                body = json.dumps({"execution_id": item_id, "follow": False}).encode()
                with pytest.raises(RemoteError, match="bad_request"):
                    async with transport.stream(node.node_id, LOG_PROTOCOL, body) as chunks:
                        async for chunk in chunks:
                            got += chunk
            assert got == b""
        # the requester that created it still reads both (the API's `get` and log stream go this way)
        result = b"".join([chunk async for chunk in node.content.open_result(node.node_id, execution_id, "stdout")])
        assert result == secret.encode()
        request = json.dumps({"execution_id": execution_id, "follow": False}).encode()
        assert node.transport is not None
        async with node.transport.stream(node.node_id, LOG_PROTOCOL, request) as chunks:
            frames = b"".join([chunk async for chunk in chunks])
        assert secret.encode() in frames
        nursery.cancel_scope.cancel()


async def test_asking_for_a_bid_with_another_requesters_execution_id_takes_nothing_over(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        assert node.requester is not None and node.compute is not None
        job = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout="mine\n", sleep=1.0)))
        execution_id = await wait_for_execution(node, job.id, {ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING})
        async with rogue_peer(nursery, tmp_path, node) as rogue:
            transport = P2PTransport(rogue)
            ask = {"execution_id": execution_id, "requester_id": rogue.peer_id, "job": noop_job(CRON_LINE)}
            with pytest.raises(RemoteError) as refused:
                await raw_call(transport, node.node_id, m.ASK_FOR_BID, ask)
            assert refused.value.code == "illegal_state" and "exists already" in refused.value.remote_message
            for protocol in (m.CANCEL, m.RESULT_REJECTED):
                with pytest.raises(RemoteError, match="is not the requester"):
                    await raw_call(transport, node.node_id, protocol, {"execution_id": execution_id})
        local = await node.compute._store.get(execution_id)
        assert local.requester_id == node.node_id and local.job.id == job.id
        with trio.fail_after(15):
            while not (job := await node.requester.store.get_job(job.id)).state.terminal:
                await node.requester.wait_for_change(job.id, 1.0)
        assert job.state == JobState.COMPLETED
        result = b"".join([chunk async for chunk in node.content.open_result(node.node_id, execution_id, "stdout")])
        assert result == b"mine\n"
        nursery.cancel_scope.cancel()


def some_peer_id() -> str:
    from libp2p.peer.id import ID

    return ID(b"\x12\x20" + os.urandom(32)).to_base58()


async def test_node_info_gossip_naming_another_node_is_ignored(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        requester = await nursery.start(Node(node_config(tmp_path / "req", node_types=(NodeType.REQUESTER,),
                                                         serve_api=False)).run)
        compute = await nursery.start(Node(node_config(tmp_path / "compute", node_types=(NodeType.COMPUTE,),
                                                       peers=(requester.addrs()[0],), engines=("noop",),
                                                       serve_api=False, labels={"who": "honest"})).run)
        assert requester.requester is not None
        table = requester.requester.nodes
        with trio.fail_after(10):
            await table.wait_for(compute.node_id)
        async with rogue_peer(nursery, tmp_path, requester) as rogue:
            rogue_addr = rogue.listen_addrs[0]
            nobody = some_peer_id()
            forged = [
                NodeInfo(node_id=compute.node_id, node_types=[NodeType.COMPUTE], labels={"who": "rogue"},
                         addrs=[rogue_addr]),                                      # speaks for the compute node
                NodeInfo(node_id=nobody, node_types=[NodeType.COMPUTE], addrs=[]),   # invents a node
                NodeInfo(node_id=rogue.peer_id, node_types=[NodeType.COMPUTE], labels={"who": "bad-addr"},
                         addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{compute.node_id}"]),     # its id, another's address
            ]
            # a capacity no machine has cannot be built through the model: written as JSON
            inf = json.loads(NodeInfo(node_id=rogue.peer_id, labels={"who": "infinite"}).model_dump_json())
            inf["capacity_total"]["cpu"] = "inf"
            for round_ in range(1, 200):
                for info in forged:
                    await rogue.publish(NODE_INFO_TOPIC, info.model_dump_json().encode())
                await rogue.publish(NODE_INFO_TOPIC, json.dumps(inf).encode())
                # its own NodeInfo, published last: once the requester has this round, it had the forged ones
                own = NodeInfo(node_id=rogue.peer_id, node_types=[NodeType.COMPUTE], labels={"round": str(round_)},
                               addrs=[rogue_addr])
                await rogue.publish(NODE_INFO_TOPIC, own.model_dump_json().encode())
                with trio.move_on_after(0.3):
                    while not ((seen := table.get(rogue.peer_id)) and seen.labels.get("round") == str(round_)):
                        await trio.sleep(0.02)
                if seen and seen.labels.get("round") == str(round_):
                    break
            else:
                raise AssertionError("the rogue's own NodeInfo never arrived")
        honest = table.get(compute.node_id)
        assert honest is not None and honest.labels == {"who": "honest"} and rogue_addr not in honest.addrs
        assert table.get(nobody) is None and nobody not in requester.known_addrs
        assert requester.known_addrs[compute.node_id] == compute.addrs()
        # said once for the sender, not once a message
        said = f"node {requester.node_id} ignored NodeInfo gossip from {rogue.peer_id}"
        warned = [r for r in caplog.records if r.getMessage().startswith(said)]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        nursery.cancel_scope.cancel()


async def test_a_gossip_message_with_a_forged_origin_is_dropped(tmp_path: Path) -> None:
    """The origin of a gossip message is its signed `from`: one that names another peer does not verify.
    (Built with py-libp2p's own message type and router: the rogue bypasses our publish().)"""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", node_types=(NodeType.REQUESTER,),
                                                    serve_api=False)).run)
        assert node.requester is not None
        async with rogue_peer(nursery, tmp_path, node) as rogue:
            pubsub = rogue._pubsub
            victim_keys = create_new_key_pair()
            victim = ID.from_pubkey(victim_keys.public_key).to_base58()
            for round_ in range(1, 200):
                info = NodeInfo(node_id=victim, node_types=[NodeType.COMPUTE], labels={"round": str(round_)})
                msg = rpc_pb2.Message(data=info.model_dump_json().encode(), topicIDs=[NODE_INFO_TOPIC],
                                      from_id=ID.from_base58(victim).to_bytes(), seqno=round_.to_bytes(8, "big"))
                # signed with the rogue's key, not the victim's
                msg.signature = rogue._host.get_private_key().sign(
                    PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
                await pubsub.router.publish(pubsub.my_id, msg)
                own = NodeInfo(node_id=rogue.peer_id, node_types=[NodeType.COMPUTE], labels={"round": str(round_)})
                await rogue.publish(NODE_INFO_TOPIC, own.model_dump_json().encode())
                with trio.move_on_after(0.3):
                    while not ((seen := node.requester.nodes.get(rogue.peer_id))
                               and seen.labels.get("round") == str(round_)):
                        await trio.sleep(0.02)
                if seen and seen.labels.get("round") == str(round_):
                    break
            else:
                raise AssertionError("the rogue's own NodeInfo never arrived")
            assert node.requester.nodes.get(victim) is None
        nursery.cancel_scope.cancel()



async def test_a_repo_holding_executions_a_rogue_planted_before_ids_were_typed_still_opens(tmp_path: Path) -> None:
    """compute.db rows written before ids were checked (an id that is a path, an upper-case UUID, a requester id
    that is no peer id), left unfinished: the node starts, fails them without telling anyone, and works."""
    from bacalhau.compute.store import ExecutionStore, LocalExecution

    repo = tmp_path / "node"
    repo.mkdir()
    store = ExecutionStore(repo / "compute.db")
    job = Job.model_validate(noop_job(CRON_LINE))
    planted = [("../../planted", "12D3KooWRogueRogueRogue"), (new_id().upper(), "not-a-peer"),
               (new_id(), "not-a-peer")]
    for execution_id, requester in planted:
        await store.create(LocalExecution(id=execution_id, job=job, requester_id=requester,
                                          state=ExecutionState.NEW))
    store.close()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(repo, engines=("noop",))).run)
        assert node.requester is not None and node.compute is not None
        for execution_id, _ in planted:
            assert (await node.compute._store.get(execution_id)).state == ExecutionState.FAILED
        own = await node.requester.submit(JobSpec(engine="noop", noop=NoopSpec(stdout="fine")))
        await wait_for_execution(node, own.id, {ExecutionState.COMPLETED})
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "planted").exists()
