"""A callback lost on the way (a call that timed out under load, a reset stream) must not leave its job running
for good: the requester asks the node how a stalled execution goes and catches up."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.errors import TransportError
from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node, NodeDeps


@pytest.mark.parametrize("lost", [m.ON_RUN_COMPLETE, m.ON_PUBLISH_COMPLETE, m.ON_RUN_PUBLISHED])
async def test_a_job_whose_callback_was_lost_still_completes(tmp_path: Path, lost: str) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False, reconcile_interval=0.3,
                                                  node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
        compute = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                      engines=("noop",)), NodeDeps(network=net)).run)
        if lost != m.ON_RUN_PUBLISHED:
            # the callbacks of the flow of before pre-approved asks: the node stands in for one of that version
            del compute.transport.handlers[m.ASK_FOR_BID_APPROVED]
        dropped: list[str] = []
        real_call = compute.transport.call

        async def lossy_call(peer_id: str, protocol_id: str, payload: bytes, *, timeout: float) -> bytes:
            if protocol_id == lost and not dropped:
                dropped.append(protocol_id)
                raise TransportError("the callback was lost on the way (the test drops it)")
            return await real_call(peer_id, protocol_id, payload, timeout=timeout)

        compute.transport.call = lossy_call
        with trio.fail_after(5):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="done\n")))
        with trio.fail_after(10):
            while not (await req.requester.store.get_job(job.id, full=False)).state.terminal:
                await req.requester.wait_for_change(job.id, 0.5)
        done = await req.requester.store.get_job(job.id)
        assert dropped == [lost]
        assert done.state == JobState.COMPLETED, done.reason
        assert [e.state for e in done.executions] == [ExecutionState.COMPLETED]
        assert done.executions[0].result_ref.startswith("ipfs://")
        nursery.cancel_scope.cancel()
