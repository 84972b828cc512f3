"""What the compute node decides itself: a failure that is the job's own doing is not retried on other nodes
(each would fail it the same way, and a job that asks for three attempts cost three nodes), and a nonzero exit
the job asks to retry is failed by the node that holds the spec, with no round trip through the requester."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import wasmtime

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.transport import InMemoryNetwork, RawHandler, typed_handler
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.models.job import WASM_INLINE_PREFIX
from bacalhau.node import Node, NodeDeps
from tests.test_flow_inmemory import wait_terminal

HELLO = '(module (func (export "_start")))'


async def _cluster(nursery: trio.Nursery, tmp_path: Path, net: InMemoryNetwork, n: int,
                   engines: tuple[str, ...]) -> tuple[Node, list[Node]]:
    req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False, node_info_ttl=2.0,
                                              node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
    computes = []
    for i in range(n):
        cfg = NodeConfig(repo_dir=tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,), node_info_interval=0.2,
                         engines=engines)
        deps = NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()} if engines == ("noop",) else None)
        computes.append(await nursery.start(Node(cfg, deps).run))
    with trio.fail_after(5):
        while len(req.requester.nodes.alive()) < n:
            await trio.sleep(0.05)
    return req, computes


async def test_a_wasm_job_missing_its_entry_point_is_not_retried_on_other_nodes(tmp_path: Path) -> None:
    """Before: the requester took the node's failure for the node's fault and asked the next node, and the
    next, until attempts or nodes ran out (3 nodes burnt on a job no node can run)."""
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req, _ = await _cluster(nursery, tmp_path, net, 3, ("wasm",))
        module = WASM_INLINE_PREFIX + base64.b64encode(wasmtime.wat2wasm(HELLO)).decode()
        job = await req.requester.submit(JobSpec(engine=Engine.WASM, wasm={"module": module, "entry_point": "nope"},
                                                 retry={"max_attempts": 3}))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.FAILED
        assert "exports no function 'nope'" in done.reason and "not retried" in done.reason, done.reason
        tried = [e for e in done.executions if e.state == ExecutionState.FAILED]
        assert len(tried) == 1, [(e.node_id, e.reason) for e in done.executions]
        nursery.cancel_scope.cancel()


async def test_a_nonzero_exit_the_job_retries_is_failed_by_the_node_without_a_result_rejected(tmp_path: Path) -> None:
    """Before: the node sent run-complete, the requester answered result-rejected (two messages). Now the
    node, holding the spec, fails the attempt itself with one failure callback; the requester retries."""
    net = InMemoryNetwork()
    rejected: list[str] = []
    async with trio.open_nursery() as nursery:
        req, computes = await _cluster(nursery, tmp_path, net, 2, ("noop",))
        for c in computes:
            transport = net.nodes[c.node_id]
            original = transport.handlers[m.RESULT_REJECTED]

            def counting(original: RawHandler = original, node_id: str = c.node_id) -> RawHandler:
                async def handle(peer_id: str, payload: bytes) -> bytes:
                    rejected.append(node_id)
                    return await original(peer_id, payload)
                return handle

            transport.register(m.RESULT_REJECTED, counting())
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(exit_code=3),
                                                 retry={"on_nonzero_exit": True, "max_attempts": 2}))
        await wait_terminal(req, job.id)
        done = await req.requester.store.get_job(job.id)
        assert done.state == JobState.FAILED
        failed = [e for e in done.executions if e.state == ExecutionState.FAILED]
        assert len(failed) == 2 and len({e.node_id for e in failed}) == 2
        assert all("exited with code 3" in e.reason for e in failed)
        assert rejected == []
        nursery.cancel_scope.cancel()


class _OldComputeFailure(m._Msg):
    """ComputeFailure as a requester of the previous main reads it (no `retry`; unknown fields refused)."""

    execution_id: str
    job_id: str
    node_id: str
    reason: str


async def test_a_requester_of_before_the_retry_field_still_hears_of_the_failure() -> None:
    from bacalhau.bprotocol.proxies import CallbackProxy
    from bacalhau.models import new_id

    net = InMemoryNetwork()
    old, new = net.transport("mem-0000000000aa"), net.transport("mem-0000000000bb")
    heard: list[_OldComputeFailure] = []

    async def on_failure(peer_id: str, msg: _OldComputeFailure) -> m.Ack:
        heard.append(msg)
        return m.Ack()

    old.register(m.ON_COMPUTE_FAILURE, typed_handler(_OldComputeFailure, on_failure))
    proxy = CallbackProxy(new, 5.0)
    for retry in (True, False):
        await proxy.on_compute_failure(old.self_id, m.ComputeFailure(
            execution_id=new_id(), job_id=new_id(), node_id=new.self_id, reason=f"retry={retry}", retry=retry))
    assert [h.reason for h in heard] == ["retry=True", "retry=False"]


async def test_a_compute_node_of_before_the_retry_field_has_its_failures_retried() -> None:
    """A ComputeFailure without the field (what an older node sends) reads as retry."""
    msg = m.ComputeFailure.model_validate_json(
        '{"execution_id": "%s", "job_id": "%s", "node_id": "mem-0000000000aa", "reason": "x"}'
        % ("0" * 8 + "-0000-4000-8000-" + "0" * 12, "1" * 8 + "-0000-4000-8000-" + "0" * 12))
    assert msg.retry is True


async def test_a_lost_result_accepted_does_not_leave_the_job_in_progress_for_good(tmp_path: Path) -> None:
    """Found by the simulation under loss: the requester moved the execution to publishing and told the node,
    the message was lost, the node kept it running; the reconcile pass saw a node 'running' with a result and
    a requester 'publishing' and did nothing, for ever. Now it tells the node again."""
    from bacalhau.testing.sim import Sim, SimConfig

    cfg = SimConfig(nodes=2, call_timeout=0.3, bid_timeout=0.5, gossip_interval=0.2, node_ttl=2.0,
                    reconcile_interval=0.5)
    async with Sim(cfg, tmp_path) as sim:
        dropped: list[str] = []

        def once(caller: str, callee: str, protocol_id: str) -> str:
            if protocol_id == m.RESULT_ACCEPTED and not dropped:
                dropped.append(callee)
                return "request"
            return ""

        sim.network.drop = once
        job = await sim.submit()
        done = await sim.wait_all([job.id], 10)
        assert dropped
        assert job.id in done and done[job.id].state == JobState.COMPLETED


async def test_a_lost_reply_to_bid_accepted_does_not_run_the_job_twice_at_once(tmp_path: Path) -> None:
    """The node got the acceptance and ran the job; only its reply was lost. The requester wrote the attempt
    off and asked another node: the job ran on two nodes at once (concurrency 1), and the first node's result
    was refused, its execution left running on it for good."""
    from bacalhau.testing.sim import Sim, SimConfig

    cfg = SimConfig(nodes=3, run_time=1.0, call_timeout=0.3, bid_timeout=0.5, gossip_interval=0.2, node_ttl=2.0,
                    reconcile_interval=0.5)
    async with Sim(cfg, tmp_path) as sim:
        dropped: list[str] = []

        def once(caller: str, callee: str, protocol_id: str) -> str:
            if protocol_id == m.BID_ACCEPTED and not dropped:
                dropped.append(callee)
                return "reply"
            return ""

        sim.network.drop = once
        job = await sim.submit()
        done = await sim.wait_all([job.id], 10)
        assert dropped
        assert job.id in done and done[job.id].state == JobState.COMPLETED, done
        assert sim.stats.most_at_once[job.id] == 1
        held = [ex.state for node in sim.nodes for ex in node.executions.values() if ex.job_id == job.id]
        assert all(state.terminal for state in held), held


@pytest.mark.parametrize("when", ["taking its turn", "waiting"])
async def test_a_caller_cancelled_as_it_takes_the_database_turn_loses_no_one_elses_write(tmp_path: Path,
                                                                                      when: str) -> None:
    """Found by the simulation under load: the task whose turn it was to run the queued calls was cancelled
    (its call timed out) just as it got the turn; trio.to_thread.run_sync raised Cancelled before the thread
    ran, and every call it had taken from the queue was never run: their callers got None back (a job that
    was never created, an execution update that never happened), with no error."""
    import sqlite3
    import threading

    from trio.testing import wait_all_tasks_blocked

    from bacalhau.db import Database

    db = Database(tmp_path / "t.db", "CREATE TABLE t(x INTEGER);")
    got: list[object] = []
    doomed = trio.CancelScope()

    def insert(value: int) -> Callable[[sqlite3.Connection], int]:
        def tx(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            return value
        return tx

    async def cancelled_caller() -> None:
        with doomed:
            await db.run(insert(1))

    async def other_caller() -> None:
        got.append(await db.run(insert(2)))

    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, hold)  # someone else's group is running: both calls queue up
        await trio.to_thread.run_sync(started.wait)
        nursery.start_soon(cancelled_caller)
        await wait_all_tasks_blocked()
        nursery.start_soon(other_caller)
        await wait_all_tasks_blocked()
        if when == "waiting":
            doomed.cancel()
        release.set()                     # the first in line gets the turn (and both calls) ...
        if when == "taking its turn":
            doomed.cancel()               # ... and is cancelled before its thread starts
    assert got == [2]
    rows = db.run_sync(lambda conn: [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")])
    assert 2 in rows
    db.close()


async def test_a_requester_cut_off_from_every_node_does_not_fail_what_they_run(tmp_path: Path) -> None:
    """The requester, not the nodes, lost the network for longer than the node TTL. It wrote off every
    execution in flight as 'the node was lost' and, once back, ran the jobs again elsewhere: each job ran
    twice (and twice at once where the first run was still going). Now what its nodes run is kept while it
    hears no node at all, and caught up with when they are heard again."""
    from bacalhau.testing.sim import Sim, SimConfig

    cfg = SimConfig(nodes=3, run_time=2.5, call_timeout=0.3, bid_timeout=0.5, gossip_interval=0.1, node_ttl=0.5,
                    reconcile_interval=0.3)
    async with Sim(cfg, tmp_path) as sim:
        sim.scheduled_target = 3
        jobs = [(await sim.submit()).id for _ in range(3)]
        with trio.fail_after(5):
            await sim.all_scheduled.wait()
        sim.network.isolate(sim.requester_id)
        await trio.sleep(cfg.node_ttl * 3)        # well past the TTL: every node expires from its table
        assert sim.requester.nodes.others() == 0
        sim.network.reconnect(sim.requester_id)
        done = await sim.wait_all(jobs, 15)
        assert sim.check(done, jobs) == []
        for job_id in jobs:
            job = await sim.store.get_job(job_id, full=False)
            assert job.state == JobState.COMPLETED, job.reason
            assert [e.state for e in job.executions] == [ExecutionState.COMPLETED], [
                (e.state, e.reason) for e in job.executions]


async def test_a_compute_node_of_before_still_has_a_nonzero_exit_retried_by_the_requester(tmp_path: Path) -> None:
    """Nodes of the previous main report a nonzero exit as run-complete and leave the retry to the requester:
    it still rejects the result and retries on another node."""
    from bacalhau.testing.sim import Sim, SimConfig

    async with Sim(SimConfig(nodes=2, gossip_interval=0.2, call_timeout=1.0, bid_timeout=1.0), tmp_path) as sim:
        for node in sim.nodes:
            node.decides_retries = False
        job = await sim.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(exit_code=3),
                                       retry={"on_nonzero_exit": True, "max_attempts": 2}))
        done = await sim.wait_all([job.id], 10)
        assert done[job.id].state == JobState.FAILED
        full = await sim.store.get_job(job.id)
        assert [e.state for e in full.executions] == [ExecutionState.FAILED] * 2
        assert all("exited with code 3" in e.reason for e in full.executions)
        with trio.fail_after(5):     # each is told its result was rejected (sent after the job ended, maybe)
            while [ex.state for node in sim.nodes for ex in node.executions.values()] != [ExecutionState.FAILED] * 2:
                await trio.sleep(0.02)
