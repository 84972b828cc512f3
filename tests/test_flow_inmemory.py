"""Requester and compute logic wired through the in-memory transport (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest
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


async def _single(nursery: trio.Nursery, tmp_path: Path) -> Node:
    """One noop node, requester and compute, on an in-memory network: up once it hears itself."""
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",))
    node: Node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                        executors={Engine.NOOP: NoopExecutor()})).run)
    with trio.fail_after(5):
        while not node.requester.nodes.alive():
            await trio.sleep(0.02)
    return node


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
        # one node asked for the one execution: a pre-approved ask, run and published without a word between
        # (accepted and running in one write)
        assert states == ["asked_for_bid", "bid_accepted", "running", "completed"]
        chunks = [c async for c in node.content.open_result(done.executions[0].node_id, done.executions[0].id, "stdout")]
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


async def _cluster(nursery: trio.Nursery, tmp_path: Path, net: InMemoryNetwork, executors: list[NoopExecutor]) -> tuple[Node, list[Node]]:
    req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False, node_info_ttl=2.0,
                                              node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
    computes = []
    for i, executor in enumerate(executors):
        cfg = NodeConfig(repo_dir=tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,), node_info_interval=0.2)
        computes.append(await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: executor})).run))
    with trio.fail_after(5):
        while len(req.requester.nodes.alive()) < len(executors):
            await trio.sleep(0.05)
    return req, computes


async def test_job_is_retried_on_another_node_when_the_executor_fails(tmp_path: Path) -> None:
    from bacalhau.errors import ExecutorError

    async def broken(execution_id: str, job: object) -> None:
        raise ExecutorError("image 'x' is not available on this node")

    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, computes = await _cluster(nursery, tmp_path, net, [NoopExecutor(on_start=broken), NoopExecutor()])
        # make the broken node the preferred one: it is asked first, fails, the job moves on
        for _ in range(3):
            job = await req.requester.submit(JobSpec(engine=Engine.NOOP))
            await wait_terminal(req, job.id)
            done = await req.requester.store.get_job(job.id)
            assert done.state == JobState.COMPLETED, done.reason
            completed = [e for e in done.executions if e.state == ExecutionState.COMPLETED]
            assert [e.node_id for e in completed] == [computes[1].node_id]
            failed = [e for e in done.executions if e.state == ExecutionState.FAILED]
            assert all(e.node_id == computes[0].node_id and "not available" in e.reason for e in failed)
        nursery.cancel_scope.cancel()


async def test_job_fails_listing_every_attempt_when_all_nodes_fail(tmp_path: Path) -> None:
    from bacalhau.errors import ExecutorError

    async def broken(execution_id: str, job: object) -> None:
        raise ExecutorError("engine exploded")

    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await _cluster(nursery, tmp_path, net, [NoopExecutor(on_start=broken), NoopExecutor(on_start=broken)])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.FAILED
        assert done.reason.count("engine exploded") == 2 and "attempt 2" in done.reason
        nursery.cancel_scope.cancel()


async def test_non_zero_exit_completes_and_is_not_retried(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await _cluster(nursery, tmp_path, net, [NoopExecutor(), NoopExecutor()])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(exit_code=7)))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED
        assert [e.result.exit_code for e in done.executions if e.result] == [7]
        nursery.cancel_scope.cancel()


async def test_concurrency_runs_on_that_many_nodes_and_rejects_extra_bids(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, computes = await _cluster(nursery, tmp_path, net, [NoopExecutor() for _ in range(3)])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, concurrency=2))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.COMPLETED
        completed = {e.node_id for e in done.executions if e.state == ExecutionState.COMPLETED}
        assert len(completed) == 2
        rejected = [e for e in done.executions if e.state == ExecutionState.BID_REJECTED]
        assert len(rejected) == 1 and "not needed" in rejected[0].reason
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_lost_node_mid_execution_is_retried_elsewhere(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    started = trio.Event()

    async def note(execution_id: str, job: object) -> None:
        started.set()

    async with trio.open_nursery() as nursery:
        req, computes = await _cluster(
            nursery, tmp_path, net, [NoopExecutor(on_start=note), NoopExecutor(on_start=note)])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30)))
        with trio.fail_after(5):
            await started.wait()
            # the requester takes the started run's bid a moment later (service.py PREAPPROVED_SETTLE)
            while not (taken := [e for e in (await req.requester.store.get_job(job.id)).executions
                                 if e.state in (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING)]):
                await req.requester.wait_for_change(job.id, 0.5)
        first = taken[0]
        # the node dies: no more NodeInfo, no calls get through
        net.down.add(first.node_id)
        victim = next(c for c in computes if c.node_id == first.node_id)
        victim.config.node_info_interval = 3600
        with trio.fail_after(10):
            while True:
                current = await req.requester.store.get_job(job.id)
                others = [e for e in current.executions if e.node_id != first.node_id and not e.state.terminal]
                if others:
                    break
                await req.requester.wait_for_change(job.id, 0.5)
        lost = next(e for e in current.executions if e.id == first.id)
        assert lost.state == ExecutionState.FAILED and lost.reason == "the node was lost"
        nursery.cancel_scope.cancel()


async def test_a_job_may_ask_to_be_retried_when_it_exits_non_zero(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await _cluster(nursery, tmp_path, net, [NoopExecutor(), NoopExecutor()])
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(exit_code=3),
                                                 retry={"on_nonzero_exit": True, "max_attempts": 2}))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.FAILED
        failed = [e for e in done.executions if e.state == ExecutionState.FAILED]
        assert len(failed) == 2 and len({e.node_id for e in failed}) == 2
        assert all("exited with code 3" in e.reason for e in failed)
        nursery.cancel_scope.cancel()


async def test_a_plain_jobs_first_ask_is_on_disk_when_its_submit_returns(tmp_path: Path) -> None:
    """A job needing one execution has it chosen at submit and written with the job, in one transaction: no
    second durable write in series before its node is asked."""
    import sqlite3
    import time

    from bacalhau.errors import ReplayedSignature

    async with trio.open_nursery() as nursery:
        node = await _single(nursery, tmp_path)
        spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30))
        job = await node.requester.submit(spec, signature=("sig-1", time.time()))
        # no checkpoint since: nothing spawned by the submit has run yet; what is on disk is the submit's own
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            rows = conn.execute("SELECT node_id, state FROM executions WHERE job_id=?", (job.id,)).fetchall()
        assert rows == [(node.node_id, "asked_for_bid")]
        assert [e.state for e in (await node.requester.store.get_job(job.id, full=False)).executions] == [
            ExecutionState.ASKED_FOR_BID]
        # a replayed submit makes no job, and the node it would have gone to is not left counting it as load
        load = node.requester.nodes.load(node.node_id)
        with pytest.raises(ReplayedSignature):
            await node.requester.submit(spec, signature=("sig-1", time.time()))
        assert node.requester.nodes.load(node.node_id).extra == load.extra
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            assert conn.execute("SELECT count(*) FROM executions").fetchone()[0] == 1
        nursery.cancel_scope.cancel()


async def test_a_pre_approved_ask_with_room_is_accepted_and_started_in_one_write(tmp_path: Path) -> None:
    """The compute node writes a pre-approved execution it has room for as accepted and running at once (one
    durable write less in series before it runs); one without room waits accepted, and starts when room frees."""
    import sqlite3

    from bacalhau.models import Resources

    net = InMemoryNetwork()
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",), capacity=Resources(cpu=1, memory=1 << 30))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run)
        with trio.fail_after(5):
            while not node.requester.nodes.alive():
                await trio.sleep(0.02)
        whole = Resources(cpu=1, memory=1 << 20)      # one at a time: the second queues
        first = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=0.3), resources=whole))
        second = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=0.3), resources=whole))
        for job in (first, second):
            await wait_terminal(node, job.id)
            assert (await node.requester.store.get_job(job.id)).state == JobState.COMPLETED
        with sqlite3.connect(tmp_path / "compute.db") as conn:
            def history(job_id: str) -> list[tuple[float, str]]:
                return conn.execute(
                    "SELECT e.time, e.state FROM local_events e JOIN local_executions x ON x.id = e.execution_id"
                    " WHERE x.job LIKE ? ORDER BY e.seq", (f'%"{job_id}"%',)).fetchall()
            one, two = history(first.id), history(second.id)
        assert [s for _, s in one][:2] == ["bid_accepted", "running"] and one[0][0] == one[1][0], one
        assert [s for _, s in two][:2] == ["bid_accepted", "running"] and two[1][0] > two[0][0], two
        assert node.compute.capacity.used == Resources(), node.compute.capacity.used
        nursery.cancel_scope.cancel()


async def test_a_short_pre_approved_run_is_written_with_its_bid_in_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                            ) -> None:
    """A pre-approved ask's yes waits (PREAPPROVED_SETTLE) for the run's end that follows at once, and both are
    written in one transaction: one durable commit in series less a short job (issue 15). The history keeps
    every step, the bid's at the time its reply came."""
    from bacalhau.requester import service

    monkeypatch.setattr(service, "PREAPPROVED_SETTLE", 30.0)    # this test's run ends within it however slow
    async with trio.open_nursery() as nursery:
        node = await _single(nursery, tmp_path)
        store = node.requester.store
        writes: list[ExecutionState] = []
        update = store.update_execution

        async def counted(execution_id: str, expected: object, new: ExecutionState, *args: object, **kw: object) -> object:
            writes.append(new)
            return await update(execution_id, expected, new, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "update_execution", counted)
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
        await wait_terminal(node, job.id)
        done = await store.get_job(job.id)
        assert done.state == JobState.COMPLETED, done.reason
        assert writes == [ExecutionState.COMPLETED], writes       # not the bid first, then the end
        steps = [(e.state, e.time) for e in done.events if e.kind == "execution"]
        assert [s for s, _ in steps] == ["asked_for_bid", "bid_accepted", "running", "completed"], steps
        assert steps[1][1] == steps[2][1] <= steps[3][1], steps
        assert [e.state for e in done.events if e.kind == "job"] == ["pending", "in_progress", "completed"]
        assert not node.requester._replied and not node.requester._awaiting_bid
        nursery.cancel_scope.cancel()


async def test_a_longer_pre_approved_run_shows_running_within_the_settle_wait(tmp_path: Path) -> None:
    """The wait for a run's end is short: a job that runs on is in progress, its execution running, well
    before it ends."""
    from bacalhau.requester.service import PREAPPROVED_SETTLE

    async with trio.open_nursery() as nursery:
        node = await _single(nursery, tmp_path)
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=5)))
        with trio.fail_after(PREAPPROVED_SETTLE + 2):
            while (now := await node.requester.store.get_job(job.id)).state != JobState.IN_PROGRESS:
                await node.requester.wait_for_change(job.id, 0.5)
        assert [e.state for e in now.executions] == [ExecutionState.RUNNING]
        assert not node.requester._replied
        # the history says when the node's yes came, not when the wait for the run's end gave up
        full = await node.requester.store.get_job(job.id)
        taken = {(e.kind, e.state): e.time for e in full.events}
        assert taken["execution", "bid_accepted"] == taken["execution", "running"] == taken["job", "in_progress"]
        assert full.executions[0].updated_at - taken["execution", "running"] >= PREAPPROVED_SETTLE * 0.8, full.events
        await node.requester.cancel(job.id, "enough")
        nursery.cancel_scope.cancel()
