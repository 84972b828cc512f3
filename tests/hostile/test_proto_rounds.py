"""Fewer bprotocol round trips a job (issue 15): a plain job's ask is pre-approved (bprotocol/messages.py), its
reply is the bid and its one callback carries the run's result and the published reference. Attacks: a peer
reporting a pre-approved outcome for an execution that was not asked so, a node that was not asked, an ask's
reply naming another execution; and the rounds of the flows that keep the old steps (a fan-out job, a node of
before pre-approved asks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.proxies import CallbackProxy, ComputeProxy
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.errors import RemoteError
from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, NoopSpec, RunResult
from bacalhau.node import Node, NodeDeps

S = ExecutionState
OLD_FLOW = [m.ASK_FOR_BID, m.ON_BID_COMPLETE, m.BID_ACCEPTED, m.ON_RUN_COMPLETE, m.RESULT_ACCEPTED,
            m.ON_PUBLISH_COMPLETE]
A_CID = "ipfs://bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def stand_in_for_an_old_node(node: Node) -> None:
    """The node as one of the version before pre-approved asks: it does not speak the protocol (the rest of the
    code is the same; what a requester meets is what an old node's UNKNOWN answer gives)."""
    del node.transport.handlers[m.ASK_FOR_BID_APPROVED]


async def cluster(nursery: trio.Nursery, tmp_path: Path, net: InMemoryNetwork, zones: list[str]) -> tuple[Node, list[Node]]:
    req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False,
                                              node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
    computes = []
    for zone in zones:
        cfg = NodeConfig(repo_dir=tmp_path / zone, node_types=(NodeType.COMPUTE,), labels={"zone": zone},
                         engines=("noop",))
        computes.append(await nursery.start(Node(cfg, NodeDeps(network=net)).run))
    with trio.fail_after(5):
        while len(req.requester.nodes.alive()) < len(zones):
            await trio.sleep(0.05)
    return req, computes


def record_calls(net: InMemoryNetwork) -> list[str]:
    """The protocol ids of every call on the network from here on, in order (none is lost)."""
    calls: list[str] = []

    def note(caller: str, callee: str, protocol_id: str) -> str:
        calls.append(protocol_id)
        return ""

    net.drop = note
    return calls


async def wait_job(node: Node, job_id: str, states: set[JobState], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while (await node.requester.store.get_job(job_id, full=False)).state not in states:
            await node.requester.wait_for_change(job_id, 0.5)


async def wait_execution(node: Node, job_id: str, states: set[ExecutionState], timeout: float = 10) -> str:
    with trio.fail_after(timeout):
        while not (found := [e for e in (await node.requester.store.get_job(job_id)).executions
                             if e.state in states]):
            await node.requester.wait_for_change(job_id, 0.2)
    return found[0].id


async def test_a_plain_job_takes_two_calls_and_its_records_stay_right(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await cluster(nursery, tmp_path, net, ["a"])
        calls = record_calls(net)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
        await wait_job(req, job.id, {JobState.COMPLETED, JobState.FAILED})
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert calls == [m.ASK_FOR_BID_APPROVED, m.ON_RUN_PUBLISHED]     # was six
        [ex] = done.executions
        assert ex.state == S.COMPLETED and ex.result is not None and ex.result.stdout_tail == "hi\n"
        assert ex.result_ref.startswith("ipfs://")
        # accepted and running in one write: `describe` shows it running while it runs, as the old flow did
        assert [e.state for e in done.events if e.kind == "execution"] == ["asked_for_bid", "bid_accepted",
                                                                           "running", "completed"]
        assert [e.state for e in done.events if e.kind == "job"] == ["pending", "in_progress", "completed"]
        nursery.cancel_scope.cancel()


async def test_a_fan_out_job_keeps_the_old_flow(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await cluster(nursery, tmp_path, net, ["a", "b"])
        calls = record_calls(net)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, concurrency=2))
        await wait_job(req, job.id, {JobState.COMPLETED, JobState.FAILED})
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert m.ASK_FOR_BID_APPROVED not in calls and m.ON_RUN_PUBLISHED not in calls
        assert sorted(calls) == sorted(OLD_FLOW * 2)
        nursery.cancel_scope.cancel()


async def test_mixed_versions_run_jobs_on_both_and_the_old_node_is_asked_the_old_way(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, (old, _new) = await cluster(nursery, tmp_path, net, ["old", "new"])
        stand_in_for_an_old_node(old)
        calls = record_calls(net)
        first = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone=old"))
        await wait_job(req, first.id, {JobState.COMPLETED, JobState.FAILED})
        # the old node refused the protocol once: asked the old way at once, in the same task
        assert calls == [m.ASK_FOR_BID_APPROVED, *OLD_FLOW]
        calls.clear()
        second = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone=old"))
        third = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone=new"))
        for job in (first, second, third):
            await wait_job(req, job.id, {JobState.COMPLETED, JobState.FAILED})
            done = await req.requester.store.get_job(job.id, full=False)
            assert done.state == JobState.COMPLETED, done.reason
        # remembered: the old node is not offered the new protocol again; the new node is
        assert sorted(calls) == sorted([*OLD_FLOW, m.ASK_FOR_BID_APPROVED, m.ON_RUN_PUBLISHED])
        nursery.cancel_scope.cancel()


async def test_a_job_cancelled_while_its_pre_approved_execution_starts_is_cancelled_on_the_node(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, (compute,) = await cluster(nursery, tmp_path, net, ["a"])
        handler = compute.transport.handlers[m.ASK_FOR_BID_APPROVED]
        asked, go = trio.Event(), trio.Event()

        async def held(peer_id: str, payload: bytes) -> bytes:
            asked.set()
            await go.wait()        # the requester cancels the job while the node has not yet taken the ask
            return await handler(peer_id, payload)

        compute.transport.handlers[m.ASK_FOR_BID_APPROVED] = held
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        with trio.fail_after(5):
            await asked.wait()
        await req.requester.cancel(job.id)
        [ex] = (await req.requester.store.get_job(job.id)).executions
        go.set()                   # the node takes it and starts it: the reply says so
        proxy = ComputeProxy(req.transport, 5)
        with trio.fail_after(10):
            while (status := await _status(proxy, compute.node_id, ex.id)) != S.CANCELLED:
                await trio.sleep(0.02)
        assert status == S.CANCELLED
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.CANCELLED
        assert [e.state for e in done.executions] == [S.CANCELLED]
        assert compute.compute.capacity.queued == 0 and not compute.compute._busy
        nursery.cancel_scope.cancel()


async def _status(proxy: ComputeProxy, node_id: str, execution_id: str) -> ExecutionState | None:
    try:
        return (await proxy.execution_status(node_id, execution_id)).state
    except RemoteError:
        return None       # not yet on the node


@pytest.mark.parametrize("why", ["an old-flow execution", "a fan-out execution"])
async def test_a_pre_approved_outcome_for_an_execution_not_asked_so_moves_nothing(tmp_path: Path, why: str) -> None:
    """The attack: the node holding the execution skips result_accepted, reporting it ran and is published in
    one callback although its ask was not pre-approved. A requester taking it for any execution the node holds
    would complete the job on the node's word alone."""
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, computes = await cluster(nursery, tmp_path, net, ["a", "b"])
        if why == "an old-flow execution":
            for node in computes:
                stand_in_for_an_old_node(node)
            spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60))
        else:
            spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60), concurrency=2)
        job = await req.requester.submit(spec)
        with trio.fail_after(10):     # every execution it needs running (the rest rejected), nothing more to move
            while True:
                before = await req.requester.store.get_job(job.id)
                if sum(e.state == S.RUNNING for e in before.executions) == spec.concurrency:
                    break
                await req.requester.wait_for_change(job.id, 0.2)
        ex_id = next(e.id for e in before.executions if e.state == S.RUNNING)
        ex = next(e for e in before.executions if e.id == ex_id)
        holder = next(c for c in computes if c.node_id == ex.node_id)
        forged = m.RunPublished(execution_id=ex.id, job_id=job.id, node_id=holder.node_id,
                                result=RunResult(exit_code=0), result_ref=A_CID)
        with pytest.raises(RemoteError, match="not one asked pre-approved"):
            await CallbackProxy(holder.transport, 5).on_run_published(req.node_id, forged)
        after = await req.requester.store.get_job(job.id)
        assert after.state == JobState.IN_PROGRESS
        assert [(e.id, e.state, e.result_ref) for e in after.executions] == \
            [(e.id, e.state, e.result_ref) for e in before.executions]
        nursery.cancel_scope.cancel()


async def test_a_pre_approved_outcome_from_a_node_that_does_not_hold_the_execution_moves_nothing(
        tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, (a, b) = await cluster(nursery, tmp_path, net, ["a", "b"])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60), node_selector="zone=a"))
        ex_id = await wait_execution(req, job.id, {S.RUNNING})
        for liar, named in ((b, b.node_id), (b, a.node_id)):     # as itself, and naming the holder
            forged = m.RunPublished(execution_id=ex_id, job_id=job.id, node_id=named,
                                    result=RunResult(exit_code=0), result_ref=A_CID)
            with pytest.raises(RemoteError, match="does not hold"):
                await CallbackProxy(liar.transport, 5).on_run_published(req.node_id, forged)
        after = await req.requester.store.get_job(job.id)
        assert after.state == JobState.IN_PROGRESS
        assert [(e.state, e.result_ref) for e in after.executions] == [(S.RUNNING, "")]
        nursery.cancel_scope.cancel()


async def test_an_asks_reply_naming_another_execution_is_refused(tmp_path: Path) -> None:
    """The node answers the pre-approved ask with a yes for another execution (one of a job it also runs): the
    ask's execution is written off and the node told to drop it; the other execution is not moved."""
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, (compute,) = await cluster(nursery, tmp_path, net, ["a"])
        other = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        other_ex = await wait_execution(req, other.id, {S.RUNNING})
        handler = compute.transport.handlers[m.ASK_FOR_BID_APPROVED]

        async def lying(peer_id: str, payload: bytes) -> bytes:
            await handler(peer_id, payload)      # it takes the ask (and runs it), and says something else
            return m.Envelope(result=m.BidResult(execution_id=other_ex, job_id=other.id, node_id=compute.node_id,
                                                 accepted=True).model_dump(mode="json")).model_dump_json().encode()

        compute.transport.handlers[m.ASK_FOR_BID_APPROVED] = lying
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        ex_id = await wait_execution(req, job.id, {S.FAILED, S.BID_REJECTED, S.RUNNING, S.COMPLETED})
        ex = (await req.requester.store.get_execution(ex_id))
        assert ex.state == S.FAILED and "another execution" in ex.reason
        proxy = ComputeProxy(req.transport, 5)
        with trio.fail_after(10):
            while await _status(proxy, compute.node_id, ex_id) != S.CANCELLED:
                await trio.sleep(0.02)
        assert (await req.requester.store.get_execution(other_ex)).state == S.RUNNING
        nursery.cancel_scope.cancel()


async def test_mixed_versions_over_real_libp2p(tmp_path: Path) -> None:
    """The same over libp2p's mux between processes' hosts (in-process nodes without the devstack's shortcut):
    the old node's mux answers UNKNOWN, which the requester takes as an older version."""
    from tests.conftest import node_config

    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,),
                                                   serve_api=False)).run)
        computes = []
        for zone in ("old", "new"):
            cfg = node_config(tmp_path / zone, node_types=(NodeType.COMPUTE,), serve_api=False, engines=("noop",),
                              labels={"zone": zone}, peers=(req.addrs()[0],))
            computes.append(await nursery.start(Node(cfg).run))
        stand_in_for_an_old_node(computes[0])
        with trio.fail_after(15):
            while len(req.requester.nodes.alive()) < 2:
                await trio.sleep(0.05)
        for zone, flow in (("old", "publishing"), ("new", "completed"), ("old", "publishing")):
            job = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector=f"zone={zone}"))
            await wait_job(req, job.id, {JobState.COMPLETED, JobState.FAILED}, timeout=20)
            done = await req.requester.store.get_job(job.id)
            assert done.state == JobState.COMPLETED, done.reason
            # the old flow's execution goes through running and publishing; the pre-approved one from running
            # straight on
            assert [e.state for e in done.events if e.kind == "execution"][3] == flow
        assert req.requester._old_flow == {computes[0].node_id}
        nursery.cancel_scope.cancel()


async def test_a_requester_restarted_before_the_asks_reply_catches_up_and_takes_the_outcome(tmp_path: Path) -> None:
    """The requester stops with the pre-approved ask sent and its reply unheard (its record says asked); the
    node runs it all the same. Back (same identity, over libp2p), it asks the node how it goes, finds it running,
    takes the bid and knows it for a pre-approved one, so the node's one callback completes the job (without
    this, the execution stayed asked for good: no reconcile pass looks at asks)."""
    from bacalhau.testing import free_port
    from tests.conftest import node_config

    port = free_port()
    req_cfg = node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,), serve_api=False, swarm_port=port)
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()
        started: list[Node] = []

        async def requester_until_stopped(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with first:
                async with trio.open_nursery() as inner:
                    started.append(await inner.start(Node(req_cfg).run))
                    task_status.started(started[0])

        req = await nursery.start(requester_until_stopped)
        compute = await nursery.start(Node(node_config(tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                       serve_api=False, engines=("noop",),
                                                       peers=(req.addrs()[0],))).run)
        handler = compute.transport.handlers[m.ASK_FOR_BID_APPROVED]
        asked, go = trio.Event(), trio.Event()

        async def held(peer_id: str, payload: bytes) -> bytes:
            asked.set()
            await go.wait()
            return await handler(peer_id, payload)

        compute.transport.handlers[m.ASK_FOR_BID_APPROVED] = held
        with trio.fail_after(15):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="once\n", sleep=3)))
        with trio.fail_after(10):
            await asked.wait()
        first.cancel()                     # the requester stops; the node then takes the ask and runs it
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        go.set()
        again = await nursery.start(Node(req_cfg).run)
        assert again.node_id == req.node_id
        await wait_job(again, job.id, {JobState.COMPLETED, JobState.FAILED}, timeout=20)
        done = await again.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        [ex] = done.executions
        assert ex.state == S.COMPLETED and ex.result is not None and ex.result.stdout_tail == "once\n"
        assert [e.state for e in done.events if e.kind == "job"] == ["pending", "in_progress", "completed"]
        nursery.cancel_scope.cancel()
