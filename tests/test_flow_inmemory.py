"""Requester and compute logic wired through the in-memory transport (no sockets)."""

from __future__ import annotations

from pathlib import Path

import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node, NodeDeps


async def wait_terminal(node: Node, job_id: str, timeout: float = 10) -> None:
    assert node.requester is not None
    with trio.fail_after(timeout):
        while not (await node.requester.store.get_job(job_id, full=False)).state.terminal:
            await node.requester.wait_for_change(job_id, 1)


async def test_noop_job_completes_on_a_single_node(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run)
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
        await wait_terminal(node, job.id)
        done = await node.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert [e.state for e in done.executions] == [ExecutionState.COMPLETED]
        assert done.executions[0].result.exit_code == 0
        states = [e.state for e in done.events if e.kind == "execution"]
        assert states == ["asked_for_bid", "bid_accepted", "running", "publishing", "completed"] or \
            "publishing" in states
        chunks = [c async for c in node.open_result(done.executions[0].node_id, done.executions[0].id, "stdout")]
        assert b"".join(chunks) == b"hi\n"
        nursery.cancel_scope.cancel()


async def test_job_routed_by_label_to_the_right_compute_node(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False,
                                                  node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
        computes = []
        for zone in ("eu", "us", "ap"):
            cfg = NodeConfig(repo_dir=tmp_path / zone, node_types=(NodeType.COMPUTE,), labels={"zone": zone},
                             engines=("noop",))
            computes.append(await nursery.start(Node(cfg, NodeDeps(network=net)).run))
        with trio.fail_after(5):
            while len(req.requester.nodes.alive()) < 3:
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone in (us)"))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert done.executions[-1].node_id == computes[1].node_id

        bad = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone=mars"))
        await wait_terminal(req, bad.id)
        failed = await req.requester.store.get_job(bad.id)
        assert failed.state == JobState.FAILED
        assert "matches selector 'zone=mars'" in failed.reason
        nursery.cancel_scope.cancel()
