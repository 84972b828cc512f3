"""The requester's settle (08ed610) read as an attacker and as a race would: a pre-approved ask's yes waits up to
PREAPPROVED_SETTLE for the run's end, to write both at once. Each hole found is tested here as the attack, on real
in-memory network nodes (tests/test_flow_inmemory.py) with the settle made long, so the interleaving is chosen
by the test and not by the machine's speed. Found: an execution that failed, was lost or was cancelled while its
bid waited had a history that said it never ran (asked_for_bid, failed; its job never in progress), though the
node had said yes and ran it; and the job's start, written with the run's end, came after that end in the
history (its time going back)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.errors import ExecutorError
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, ExecutionState, Job, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node, NodeDeps
from bacalhau.requester import service
from bacalhau.requester.service import Requester
from tests.test_flow_inmemory import wait_terminal

S = ExecutionState
LONG_SETTLE = 30.0     # no run here ends by itself within it: the test's events end every settle


@pytest.fixture(autouse=True)
def long_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PREAPPROVED_SETTLE", LONG_SETTLE)


async def _node(nursery: trio.Nursery, tmp_path: Path, executor: NoopExecutor, **cfg: object) -> Node:
    config = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",), **cfg)  # type: ignore[arg-type]
    node = await nursery.start(Node(config, NodeDeps(network=InMemoryNetwork(),
                                                     executors={Engine.NOOP: executor})).run)
    with trio.fail_after(5):
        while not node.requester.nodes.alive():
            await trio.sleep(0.02)
    return node


async def _settling(req: Requester) -> str:
    """The execution whose yes came and whose bid now waits (_settle)."""
    with trio.fail_after(5):
        while not req._replied:
            await trio.sleep(0.005)
    [execution_id] = req._replied
    assert execution_id in req._awaiting_bid
    return execution_id


def _steps(job: Job) -> tuple[list[str], list[str]]:
    return ([e.state for e in job.events if e.kind == "execution"], [e.state for e in job.events if e.kind == "job"])


async def _view_agrees(req: Requester, job_id: str) -> Job:
    """The job as on disk, checked against the view the hot path reads (written from commit hooks). The job
    may still be moving (a write-off is followed by its job's evaluation): the two must agree once it rests."""
    def seen(job: Job | None) -> object:
        return job and ((job.state, job.reason, job.updated_at),
                        [(e.id, e.state, e.reason, e.updated_at) for e in job.executions])

    with trio.move_on_after(5):
        while True:
            done = await req.store.get_job(job_id)
            if seen(req.store.view.job(job_id)) == seen(done):
                return done
            await req.wait_for_change(job_id, 0.2)
    assert seen(req.store.view.job(job_id)) == seen(await req.store.get_job(job_id))
    return done


def _nothing_left(req: Requester) -> None:
    """No settle, no yes waiting, and no node counting any execution of this requester as its load."""
    assert not req._replied and not req._awaiting_bid
    for node in req.nodes.alive():
        entry = req.nodes._nodes[node.node_id]
        assert not entry.live and not entry.awaiting and not entry.past_bid, entry


async def test_a_run_failing_while_its_bid_waits_is_recorded_as_accepted_and_run(tmp_path: Path) -> None:
    """The attack (a race any job that fails at once wins): the node says yes, starts the run and fails it
    (on_compute_failure) while the requester holds the bid back for the run's end. The failure ended the wait
    and wrote asked_for_bid -> failed: the history said the execution was never accepted nor run, and the job
    (retried or failed for good) never in progress, though the node had run it. Now the bid and the run are
    written with the failure, at the yes's time, and the job's start before it."""
    async with trio.open_nursery() as nursery:
        holder: list[Node] = []

        async def fail_once_settling(execution_id: str, job: Job) -> None:
            await _settling(holder[0].requester)
            raise ExecutorError("the image would not start")

        node = await _node(nursery, tmp_path, NoopExecutor(on_start=fail_once_settling))
        holder.append(node)
        req = node.requester
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec()))
        await wait_terminal(node, job.id)       # well within LONG_SETTLE: the failure ended the wait
        done = await _view_agrees(req, job.id)
        assert done.state == JobState.FAILED, done.reason
        execution, jobs = _steps(done)
        assert execution[:4] == ["asked_for_bid", "bid_accepted", "running", "failed"], execution
        assert jobs[:2] == ["pending", "in_progress"] and jobs[-1] == "failed", jobs
        assert done.events == sorted(done.events, key=lambda e: e.time), done.events
        _nothing_left(req)
        nursery.cancel_scope.cancel()


async def test_a_cancel_while_the_bid_waits_records_the_run_it_stops(tmp_path: Path) -> None:
    """The attack: the user cancels a job right after its node said yes (within the settle). The history said
    asked_for_bid -> cancelled and the job pending -> cancelled: a run the node had started (and was told to
    stop) nowhere in it. Now it shows the bid taken and the run, the job in progress, then the cancel; the
    node stops the run and gives its room back."""
    async with trio.open_nursery() as nursery:
        node = await _node(nursery, tmp_path, NoopExecutor())
        req = node.requester
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30)))
        await _settling(req)
        await req.cancel(job.id, "enough")
        done = await _view_agrees(req, job.id)
        assert done.state == JobState.CANCELLED
        assert _steps(done) == (["asked_for_bid", "bid_accepted", "running", "cancelled"],
                                ["pending", "in_progress", "cancelled"]), _steps(done)
        _nothing_left(req)
        with trio.fail_after(5):     # told to stop: the run's room comes back
            while node.compute.capacity.used.cpu:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_a_node_lost_while_the_bid_waits_leaves_a_history_of_the_run_written_off(tmp_path: Path) -> None:
    """The race: the node says yes and its gossip stops before its bid is written (the settle); the expiry
    writes the execution off. It said asked_for_bid -> failed ("the node was lost"), as if it had never run,
    though the node took it (and is told to drop it when back). Now the bid and the run come first."""
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False, node_info_ttl=0.5,
                                                   node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
        compute = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                      node_info_interval=0.1, engines=("noop",)),
                                           NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run)
        req = node.requester
        with trio.fail_after(5):
            while not req.nodes.alive():
                await trio.sleep(0.02)
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30)))
        execution_id = await _settling(req)
        net.take_down(compute.node_id)       # no more NodeInfo, no calls get through
        compute.config.node_info_interval = 3600
        with trio.fail_after(10):
            while (await req.store.get_execution(execution_id)).state == S.ASKED_FOR_BID:
                await req.wait_for_change(job.id, 0.5)
        done = await _view_agrees(req, job.id)
        execution, jobs = _steps(done)
        assert execution[:4] == ["asked_for_bid", "bid_accepted", "running", "failed"], execution
        assert "the node was lost" in (await req.store.get_execution(execution_id)).reason
        assert jobs[:2] == ["pending", "in_progress"], jobs
        assert not req._replied and not req._awaiting_bid
        nursery.cancel_scope.cancel()


async def test_a_settled_jobs_history_never_goes_back_in_time(tmp_path: Path) -> None:
    """The bid and the run's end written at once: the job's start (at the yes's time) was written after the
    execution's end, so the history read in order (describe, the events API and its websocket: by sequence)
    went back in time, the job in progress after its execution had completed."""
    async with trio.open_nursery() as nursery:
        node = await _node(nursery, tmp_path, NoopExecutor())
        req = node.requester
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=0.2)))   # its end 0.2 s on
        await wait_terminal(node, job.id)
        done = await req.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert _steps(done) == (["asked_for_bid", "bid_accepted", "running", "completed"],
                                ["pending", "in_progress", "completed"]), _steps(done)
        times = [e.time for e in done.events]
        assert times == sorted(times), [(e.kind, e.state, e.time) for e in done.events]
        await _view_agrees(req, job.id)
        _nothing_left(req)
        nursery.cancel_scope.cancel()


async def test_a_run_ending_before_the_yes_is_heard_leaves_no_settle_behind(tmp_path: Path) -> None:
    """The run's end overtakes the ask's reply (the node's callback first): written alone, with the bid; the
    late yes then starts no settle and leaves nothing counted (no wait, no node load, no reply time kept)."""
    async with trio.open_nursery() as nursery:
        node = await _node(nursery, tmp_path, NoopExecutor())
        req = node.requester
        ask = req._compute.ask_for_bid_approved

        async def reply_after_the_end(node_id: str, request: object) -> object:
            bid = await ask(node_id, request)  # type: ignore[arg-type]
            with trio.fail_after(5):
                while (await req.store.get_execution(request.execution_id)).state != S.COMPLETED:  # type: ignore[attr-defined]
                    await trio.sleep(0.005)
            return bid

        req._compute.ask_for_bid_approved = reply_after_the_end  # type: ignore[method-assign]
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
        with trio.fail_after(5):     # not LONG_SETTLE: no settle is started for what has ended
            await wait_terminal(node, job.id)
            while req._job_locks.get(job.id) is not None or req._awaiting_bid or req._replied:
                await trio.sleep(0.005)
        done = await req.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert _steps(done) == (["asked_for_bid", "bid_accepted", "running", "completed"],
                                ["pending", "in_progress", "completed"]), _steps(done)
        _nothing_left(req)
        nursery.cancel_scope.cancel()


async def test_a_requester_stopped_while_the_bid_waits_takes_the_run_once_back(tmp_path: Path) -> None:
    """The crash: the requester stops (its settle cancelled) after the node's yes, before the bid is written:
    on disk the execution is only asked. Back, it must take the node's word (the run goes on there), not write
    it off nor ask again: one execution, run once, and a complete history (real libp2p, the restart's)."""
    from tests.hostile.test_proto_review import stoppable_requester_and_computes, wait_job

    async with trio.open_nursery() as nursery:
        req_cfg, first, req, [compute] = await stoppable_requester_and_computes(nursery, tmp_path)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="once\n", sleep=2)))
        execution_id = await _settling(req.requester)
        first.cancel()
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        again = await nursery.start(Node(req_cfg).run)
        assert (await again.requester.store.get_execution(execution_id)).state == S.ASKED_FOR_BID
        await wait_job(again, job.id, {JobState.COMPLETED, JobState.FAILED}, timeout=15)
        done = await again.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        [ex] = done.executions
        assert ex.id == execution_id and ex.result is not None and ex.result.stdout_tail == "once\n"
        execution, jobs = _steps(done)
        assert execution[:3] == ["asked_for_bid", "bid_accepted", "running"] and execution[-1] == "completed"
        assert jobs == ["pending", "in_progress", "completed"], jobs
        assert (await compute.compute._store.get(execution_id)).state == S.COMPLETED    # its one run
        assert not again.requester._replied and not again.requester._awaiting_bid
        nursery.cancel_scope.cancel()


async def test_a_run_that_hits_its_timeout_while_the_bid_waits_fails_the_job_with_its_history(
        tmp_path: Path) -> None:
    """The run ends with its own error (its timeout: on_run_complete, not on_run_published) while its bid waits:
    the bid is taken, the run failed and the job with it, nothing retried, nothing left counted."""
    async with trio.open_nursery() as nursery:
        node = await _node(nursery, tmp_path, NoopExecutor())
        req = node.requester
        job = await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30), timeout=0.3))
        await _settling(req)
        await wait_terminal(node, job.id)
        done = await req.store.get_job(job.id)
        assert done.state == JobState.FAILED and "timed out" in done.reason, done.reason
        assert _steps(done) == (["asked_for_bid", "bid_accepted", "running", "failed"],
                                ["pending", "in_progress", "failed"]), _steps(done)
        _nothing_left(req)
        nursery.cancel_scope.cancel()


async def test_a_node_saying_yes_to_every_ask_leaves_no_settle_behind(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer cannot make the settle's state grow: a node that says yes to every ask and never reports an end
    has each bid written PREAPPROVED_SETTLE on, and no wait nor reply time is kept for any."""
    monkeypatch.setattr(service, "PREAPPROVED_SETTLE", 0.05)
    async with trio.open_nursery() as nursery:
        node = await _node(nursery, tmp_path, NoopExecutor())
        req = node.requester
        jobs = [await req.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30))) for _ in range(20)]
        with trio.fail_after(10):
            for job in jobs:
                while (await req.store.get_job(job.id, full=False)).state != JobState.IN_PROGRESS:
                    await req.wait_for_change(job.id, 0.5)
        assert not req._replied and not req._awaiting_bid
        for job in jobs:
            assert [e.state for e in (await req.store.get_job(job.id)).executions] == [S.RUNNING]
        for job in jobs:
            await req.cancel(job.id)
        _nothing_left(req)
        nursery.cancel_scope.cancel()
