"""A review of pre-approved asks (bprotocol/messages.py), read as an attacker and as a crash would: what the
flow of 2 calls a job left open. Each test is the attack or the fault, failing on the code before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from bacalhau.bprotocol import messages as m
from bacalhau.config import NodeConfig
from bacalhau.errors import NotFoundError
from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node
from tests.conftest import node_config

S = ExecutionState


async def stoppable_requester_and_computes(nursery: trio.Nursery, tmp_path: Path, names: tuple[str, ...] = ("c",),
                                           **requester: Any) -> tuple[NodeConfig, trio.CancelScope, Node, list[Node]]:
    """A requester (over libp2p, a fixed swarm port: it comes back where it was; `requester`: more of its
    settings) that cancelling the scope stops, and a compute node for each name joined to it: (the requester's
    config, the scope, the requester, the nodes), returned once the requester hears every node."""
    from bacalhau.testing import free_port

    req_cfg = node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,), serve_api=False,
                          swarm_port=free_port(), **requester)
    first = trio.CancelScope()

    async def requester_until_stopped(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        with first:
            async with trio.open_nursery() as inner:
                task_status.started(await inner.start(Node(req_cfg).run))

    req = await nursery.start(requester_until_stopped)
    computes = [await nursery.start(Node(node_config(tmp_path / name, node_types=(NodeType.COMPUTE,),
                                                     serve_api=False, engines=("noop",),
                                                     peers=(req.addrs()[0],))).run)
                for name in names]
    with trio.fail_after(15):
        while len(req.requester.nodes.alive()) < len(names):
            await trio.sleep(0.05)
    return req_cfg, first, req, computes


async def wait_job(node: Node, job_id: str, states: set[JobState], timeout: float) -> None:
    with trio.fail_after(timeout):
        while (await node.requester.store.get_job(job_id, full=False)).state not in states:
            await node.requester.wait_for_change(job_id, 0.5)


async def test_a_requester_restarted_while_a_pre_approved_execution_runs_takes_its_outcome(tmp_path: Path) -> None:
    """The requester stops while the node runs a pre-approved execution it had taken (its record: bid accepted)
    and comes back before the run ends. The node's one callback (on_run_published) must be taken: refused (the
    restart forgot the execution was asked pre-approved), the job waited for the reconcile pass (30 s, up to 60)
    to be completed, and the node was sent a result_accepted it could only refuse."""
    async with trio.open_nursery() as nursery:
        req_cfg, first, req, [compute] = await stoppable_requester_and_computes(nursery, tmp_path)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="once\n", sleep=3)))
        with trio.fail_after(10):
            while not [e for e in (await req.requester.store.get_job(job.id)).executions
                       if e.state in (S.BID_ACCEPTED, S.RUNNING)]:
                await req.requester.wait_for_change(job.id, 0.2)
        [ex] = (await req.requester.store.get_job(job.id)).executions
        first.cancel()                     # the requester stops while the node runs it
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        again = await nursery.start(Node(req_cfg).run)
        assert (await compute.compute._store.get(ex.id)).state in (S.BID_ACCEPTED, S.RUNNING)   # still running
        # well within the reconcile pass (30 s): the node's own callback completes it
        await wait_job(again, job.id, {JobState.COMPLETED, JobState.FAILED}, timeout=15)
        done = await again.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        [ex] = done.executions
        assert ex.state == S.COMPLETED and ex.result is not None and ex.result.stdout_tail == "once\n"
        assert ex.result_ref.startswith("ipfs://")
        # taken from on_run_published itself, not caught up with through publishing
        assert "publishing" not in [e.state for e in done.events if e.kind == "execution"]
        nursery.cancel_scope.cancel()


async def test_an_ask_the_requester_gave_up_on_is_not_run_when_it_reaches_the_node_late(tmp_path: Path) -> None:
    """The fault: the pre-approved ask reaches the node's handler, which is slow to take it (a busy disk); the
    requester's call times out, the node says it has no such execution, so the attempt is written off and the
    node told to drop it. That cancel finds nothing yet (not found: not sent again); then the node takes the ask
    and, pre-approved, starts it: a job the requester retried elsewhere (or that failed) ran there to its end,
    holding the node's capacity. (In the old flow a late ask only made a bid nobody accepted: nothing ran.)"""
    async with trio.open_nursery() as nursery:
        # over libp2p: a caller that times out gives up while the handler goes on (as between hosts)
        req = await nursery.start(Node(node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,),
                                                   serve_api=False, call_timeout=1.0)).run)
        compute = await nursery.start(Node(node_config(tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                       serve_api=False, engines=("noop",),
                                                       peers=(req.addrs()[0],))).run)
        with trio.fail_after(15):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        handler = compute.transport.handlers[m.ASK_FOR_BID_APPROVED]
        go = trio.Event()

        async def slow(peer_id: str, payload: bytes) -> bytes:
            await go.wait()
            return await handler(peer_id, payload)

        compute.transport.handlers[m.ASK_FOR_BID_APPROVED] = slow
        cancel_handler = compute.transport.handlers[m.CANCEL]
        cancelled = trio.Event()

        async def cancel_seen(peer_id: str, payload: bytes) -> bytes:
            try:
                return await cancel_handler(peer_id, payload)
            finally:
                cancelled.set()

        compute.transport.handlers[m.CANCEL] = cancel_seen
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        with trio.fail_after(10):      # the requester gives the attempt up
            while not [e for e in (await req.requester.store.get_job(job.id)).executions if e.state.terminal]:
                await req.requester.wait_for_change(job.id, 0.2)
        [ex] = [e for e in (await req.requester.store.get_job(job.id)).executions if e.state.terminal]
        assert ex.state in (S.BID_REJECTED, S.FAILED)
        with trio.fail_after(10):
            await cancelled.wait()     # the node was told to drop it, and had nothing yet
        go.set()                       # the ask lands
        with trio.fail_after(10):
            while (state := await _state_on(compute, ex.id)) not in (S.CANCELLED, S.BID_REJECTED, S.FAILED):
                if state == S.RUNNING:
                    break
                await trio.sleep(0.05)
        assert state != S.RUNNING and ex.id not in compute.compute._busy, f"the node runs it: {state}"
        nursery.cancel_scope.cancel()


async def _state_on(node: Node, execution_id: str) -> ExecutionState | None:
    try:
        return (await node.compute._store.get(execution_id)).state
    except NotFoundError:
        return None


async def test_an_ask_a_restarted_requester_wrote_off_as_never_sent_is_not_run_when_it_lands(tmp_path: Path) -> None:
    """The fault: the requester stops with a pre-approved ask in the node's hands, not yet taken (a slow disk).
    Back, it asks the node, which has no such execution: written off as never sent, and the job asked again.
    Then the node takes the first ask and, pre-approved, starts it: the job ran twice, the first run to its end
    (nobody told the node to drop it). The restarted requester tells the node to drop what it wrote off, and
    the node keeps that cancel for the ask still on its way."""
    async with trio.open_nursery() as nursery:
        req_cfg, first, req, [compute] = await stoppable_requester_and_computes(nursery, tmp_path)
        handler = compute.transport.handlers[m.ASK_FOR_BID_APPROVED]
        asked, go = trio.Event(), trio.Event()
        held: list[str] = []

        async def slow(peer_id: str, payload: bytes) -> bytes:
            if not held:               # the first ask only: the job's next attempt is taken at once
                held.append(payload.decode())
                asked.set()
                await go.wait()
            return await handler(peer_id, payload)

        compute.transport.handlers[m.ASK_FOR_BID_APPROVED] = slow
        with trio.fail_after(15):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        with trio.fail_after(10):
            await asked.wait()
        [ex] = (await req.requester.store.get_job(job.id)).executions
        first.cancel()
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        again = await nursery.start(Node(req_cfg).run)
        with trio.fail_after(15):      # written off as never sent; the job asked again
            while (await again.requester.store.get_execution(ex.id)).state != S.BID_REJECTED:
                await again.requester.wait_for_change(job.id, 0.2)
        with trio.fail_after(15):      # the job's next attempt runs on the node
            while not [e for e in (await again.requester.store.get_job(job.id)).executions
                       if e.state in (S.BID_ACCEPTED, S.RUNNING)]:
                await again.requester.wait_for_change(job.id, 0.2)
        go.set()                       # the first ask is taken now
        with trio.fail_after(10):
            while (state := await _state_on(compute, ex.id)) in (None, S.BID_ACCEPTED):
                await trio.sleep(0.05)
        assert state != S.RUNNING, f"the written-off attempt runs too: {state}"
        assert ex.id not in compute.compute._busy
        nursery.cancel_scope.cancel()


async def test_cancels_of_executions_a_node_does_not_have_are_kept_bounded(tmp_path: Path, monkeypatch) -> None:
    """The attack on the cancels a node keeps for asks still on their way: a peer sending cancels for made-up
    executions, each with a reason as long as a frame allows. Kept: as many as the cap, each reason cut short."""
    import uuid

    from bacalhau.bprotocol.proxies import ComputeProxy
    from bacalhau.compute import node as compute_node
    from bacalhau.errors import RemoteError

    monkeypatch.setattr(compute_node, "MAX_CANCELLED_AHEAD", 8)
    async with trio.open_nursery() as nursery:
        compute = await nursery.start(Node(node_config(tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                       serve_api=False, engines=("noop",))).run)
        peer = await nursery.start(Node(node_config(tmp_path / "p", node_types=(NodeType.REQUESTER,),
                                                    serve_api=False, peers=(compute.addrs()[0],))).run)
        proxy = ComputeProxy(peer.transport, 5)
        for _ in range(20):
            try:
                await proxy.cancel(compute.node_id, str(uuid.uuid4()), "x" * 200_000)
            except RemoteError as exc:
                assert exc.code == m.ErrorCode.NOT_FOUND
        kept = compute.compute._cancelled_ahead
        assert len(kept) == 8 and all(len(reason) <= 200 for reason in kept.values())
        assert {who for who, _ in kept} == {peer.node_id}
        nursery.cancel_scope.cancel()
