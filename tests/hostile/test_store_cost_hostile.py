"""The requester's job store read from memory (requester/view.py): a flood of jobs does not grow the view past
its bound, a callback for an execution it does not hold is still checked against the database, and it never
shows what is not on disk (a refused write, a write whose caller was cancelled, a combined execution-and-job
change that fails half-way, a store reopened)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import encode, parse_reply
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.errors import RemoteError, StateError
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, Execution, ExecutionState, Job, JobSpec, JobState, NoopSpec, RunResult
from bacalhau.node import Node, NodeDeps
from bacalhau.requester.store import JobStore

S = ExecutionState


async def on_disk(store: JobStore, job_id: str) -> Job:
    """The job as the database has it (a full read never comes from the view), without its events."""
    return (await store.get_job(job_id, full=True)).model_copy(update={"events": []})


async def assert_view_is_disk(store: JobStore, job_ids: list[str]) -> None:
    for job_id in job_ids:
        held = store.view.job(job_id)
        if held is not None:
            assert held == await on_disk(store, job_id)
            for ex in held.executions:
                assert store.view.execution(ex.id) == ex
                assert store.view.holder(ex.id) == (ex.node_id, job_id)


async def test_a_flood_of_jobs_never_grows_the_view_past_its_bound(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db", view_max_jobs=50)
    try:
        jobs = [Job(spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=f"{i}\n"))) for i in range(400)]
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(store.create_job, job)
        assert store.view.unfinished == 50 and len(store.view) == 50
        # a job past the bound reads from disk as one inside it does
        for job in jobs[::23]:
            assert await store.get_job(job.id, full=False) == await on_disk(store, job.id)
        await assert_view_is_disk(store, [j.id for j in jobs])
        for job in jobs:
            await store.update_job(job.id, JobState.PENDING, JobState.CANCELLED, "flooded")
        assert store.view.unfinished == 0 and len(store.view) <= 50
        await assert_view_is_disk(store, [j.id for j in jobs])
    finally:
        store.close()
    reopened = JobStore(tmp_path / "jobs.db", view_max_jobs=50)
    try:
        assert len(reopened.view) == 0      # all ended: nothing to hold
    finally:
        reopened.close()


async def test_a_flood_through_a_requester_with_a_small_view_completes_every_job(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run)
        assert node.requester is not None
        store = node.requester.store
        store.view.max_jobs = 3            # most jobs take the database's path: the same outcome
        seen: list[int] = []
        node.requester.on_change.append(lambda _: seen.append(store.view.unfinished))
        jobs = [await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
                for _ in range(30)]
        with trio.fail_after(20):
            for job in jobs:
                while not (await store.get_job(job.id, full=False)).state.terminal:
                    await node.requester.wait_for_change(job.id, 1)
        for job in jobs:
            done = await store.get_job(job.id)
            assert done.state == JobState.COMPLETED, done.reason
            assert [e.state for e in done.executions] == [S.COMPLETED]
            assert [e.state for e in done.events if e.kind == "job"] == ["pending", "in_progress", "completed"]
        assert seen and max(seen) <= 3
        nursery.cancel_scope.cancel()


async def test_a_callback_for_an_execution_outside_the_view_is_checked_against_the_database(tmp_path: Path) -> None:
    net = InMemoryNetwork()
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run)
        assert node.requester is not None
        store = node.requester.store
        store.view.max_jobs = 0            # nothing held: every check reads the database
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30)))
        with trio.fail_after(10):
            # taken and running on the node (bid accepted: a pre-approved ask's record until it ends)
            while not (ex := [e for e in (await store.get_job(job.id)).executions
                              if e.state in (S.BID_ACCEPTED, S.RUNNING)]):
                await trio.sleep(0.05)
        execution_id = ex[0].id
        assert store.view.execution(execution_id) is None
        rogue = net.transport("mem-" + "bad" * 4)
        # it speaks for the node that holds the execution, from another peer
        forged = m.RunComplete(execution_id=execution_id, job_id=job.id, node_id=node.node_id,
                               result=RunResult(exit_code=0))
        with pytest.raises(RemoteError, match="does not hold execution"):
            parse_reply(await rogue.call(node.node_id, m.ON_RUN_COMPLETE, encode(forged), timeout=10), m.Ack)
        # it names itself, but the execution is another node's
        mine = forged.model_copy(update={"node_id": rogue.self_id})
        with pytest.raises(RemoteError, match="does not hold execution"):
            parse_reply(await rogue.call(node.node_id, m.ON_RUN_COMPLETE, encode(mine), timeout=10), m.Ack)
        # an execution that exists nowhere
        ghost = mine.model_copy(update={"execution_id": "00000000-0000-4000-8000-000000000000"})
        with pytest.raises(RemoteError):
            parse_reply(await rogue.call(node.node_id, m.ON_RUN_COMPLETE, encode(ghost), timeout=10), m.Ack)
        after = await store.get_job(job.id)
        assert after.state == JobState.IN_PROGRESS
        assert [e.state for e in after.executions] == [ex[0].state]
        nursery.cancel_scope.cancel()


async def _job_with_execution(store: JobStore) -> tuple[Job, Execution]:
    job = Job(spec=JobSpec(engine=Engine.NOOP))
    await store.create_job(job)
    ex = Execution(job_id=job.id, node_id="node-a", state=S.ASKED_FOR_BID)
    await store.create_execution(ex, "asked for a bid")
    return job, ex


async def test_a_refused_or_half_failed_write_leaves_the_view_as_on_disk(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    try:
        job, ex = await _job_with_execution(store)
        other, other_ex = await _job_with_execution(store)
        await assert_view_is_disk(store, [job.id, other.id])
        # a stale expected state: refused, nothing changes
        with pytest.raises(StateError):
            await store.update_execution(ex.id, (S.RUNNING,), S.COMPLETED, "stale")
        # the execution's change is fine, its job's is not (PENDING, not IN_PROGRESS): neither is written,
        # while another call in the same group commits
        async def bad() -> None:
            with pytest.raises(StateError):
                await store.update_execution(ex.id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "accepted",
                                             job_to=(JobState.IN_PROGRESS, JobState.COMPLETED, ""))

        async def good() -> None:
            await store.update_execution(other_ex.id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "accepted",
                                         job_to=(JobState.PENDING, JobState.IN_PROGRESS, "bid accepted"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bad)
            nursery.start_soon(good)
        assert (await on_disk(store, job.id)).state == JobState.PENDING
        assert [e.state for e in (await on_disk(store, job.id)).executions] == [S.ASKED_FOR_BID]
        assert (await on_disk(store, other.id)).state == JobState.IN_PROGRESS
        assert [e.state for e in (await on_disk(store, other.id)).executions] == [S.BID_ACCEPTED]
        events = [(e.kind, e.state) for e in (await store.get_job(job.id)).events]
        assert events == [("job", "pending"), ("execution", "asked_for_bid")]
        await assert_view_is_disk(store, [job.id, other.id])
        assert store.view.job(other.id) is not None and store.view.job(job.id) is not None
    finally:
        store.close()


async def test_a_write_whose_caller_was_cancelled_is_in_the_view_as_on_disk(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    try:
        jobs = [Job(spec=JobSpec(engine=Engine.NOOP)) for _ in range(4)]
        for job in jobs:
            await store.create_job(job)
        async with trio.open_nursery() as nursery:
            scopes = []
            for job in jobs:      # the first to run takes the others' calls into its group
                scope = trio.CancelScope()
                scopes.append(scope)

                async def move(job_id: str = job.id, scope: trio.CancelScope = scope) -> None:
                    with scope:
                        await store.update_job(job_id, JobState.PENDING, JobState.IN_PROGRESS, "moved")

                nursery.start_soon(move)
            await trio.testing.wait_all_tasks_blocked()
            for scope in scopes:   # every caller gives up while the group runs: the writes go in anyway
                scope.cancel()
        for job in jobs:
            assert (await on_disk(store, job.id)).state == JobState.IN_PROGRESS
        await assert_view_is_disk(store, [j.id for j in jobs])
    finally:
        store.close()


async def test_the_view_is_rebuilt_from_disk_when_the_store_opens(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    try:
        live, live_ex = await _job_with_execution(store)
        await store.update_execution(live_ex.id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "accepted",
                                     job_to=(JobState.PENDING, JobState.IN_PROGRESS, "bid accepted"))
        await store.update_execution(live_ex.id, (S.BID_ACCEPTED,), S.RUNNING, "running")
        await store.update_execution(live_ex.id, (S.RUNNING,), S.PUBLISHING, "ran",
                                     result=RunResult(exit_code=0, stdout_bytes=3, stdout_tail="hi\n"))
        ended, ended_ex = await _job_with_execution(store)
        await store.update_job(ended.id, JobState.PENDING, JobState.CANCELLED, "no")
        before = store.view.job(live.id)
    finally:
        store.close()
    store = JobStore(tmp_path / "jobs.db")
    try:
        assert store.view.job(live.id) == before == await on_disk(store, live.id)
        assert store.view.job(ended.id) is None and store.view.execution(ended_ex.id) is None
        assert await store.get_job(ended.id, full=False) == await on_disk(store, ended.id)
        assert store.view.holder(live_ex.id) == ("node-a", live.id)
    finally:
        store.close()


async def test_a_caller_cancelled_once_its_call_was_taken_hears_how_it_went(tmp_path: Path) -> None:
    """db.py: a call taken into a running group is run and committed whatever its caller does; the caller is not
    cancelled out of knowing that (it used to get Cancelled for a write that went in), and one cancelled while
    it waited never runs."""
    import sqlite3
    import threading

    from bacalhau.db import Database

    db = Database(tmp_path / "t.db", "CREATE TABLE t(x INTEGER);")
    started = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    def hold(i: int) -> object:
        def tx(conn: sqlite3.Connection) -> int:
            started[i].set()
            release[i].wait(5)
            conn.execute("INSERT INTO t VALUES (?)", (10 + i,))
            return 10 + i
        return tx

    got: dict[str, object] = {}
    late, early = trio.CancelScope(), trio.CancelScope()

    async def call(name: str, scope: trio.CancelScope, value: int) -> None:
        with scope:
            got[name] = await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (value,)) and value)
        if scope.cancelled_caught:
            got[name] = "cancelled"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, hold(0))
        await trio.to_thread.run_sync(started[0].wait)
        nursery.start_soon(db.run, hold(1))        # first in line: it runs the next group ...
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "late", late, 3)  # ... which takes this one
        nursery.start_soon(call, "early", early, 4)
        await trio.testing.wait_all_tasks_blocked()
        early.cancel()                             # still waiting: it never runs
        release[0].set()
        await trio.to_thread.run_sync(started[1].wait)
        late.cancel()                              # taken, its group running
        release[1].set()
    assert got == {"late": 3, "early": "cancelled"}
    rows = db.run_sync(lambda conn: sorted(r[0] for r in conn.execute("SELECT x FROM t")))
    assert rows == [3, 10, 11]
    db.close()
