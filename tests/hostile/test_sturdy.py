"""Left-over correctness items, each tested as the attack or the upgrade it is about: pre-approved executions known
by a stored flag, not by their reason's text."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import trio

from bacalhau.bprotocol import messages as m
from bacalhau.db import QUARANTINE
from bacalhau.errors import NotFoundError
from bacalhau.models import Engine, Execution, ExecutionState, Job, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node
from bacalhau.requester import store as job_store
from bacalhau.requester.store import JobStore
from tests.conftest import node_config

S = ExecutionState


async def _state_on(node: Node, execution_id: str) -> ExecutionState | None:
    try:
        return (await node.compute._store.get(execution_id)).state
    except NotFoundError:
        return None


async def test_a_fan_out_ask_a_node_says_it_runs_is_not_taken_by_a_restarted_requester(tmp_path: Path) -> None:
    """The attack: a node asked for a bid on one execution of a fan-out job (concurrency 2: asked the old way, to
    bid and wait for the acceptance) runs it at once and never bids; the job's two executions run on two other
    nodes. The requester restarts, asks each node how its execution goes, and the liar says running. Before, a
    restarted requester took any asked execution its node reported running as a pre-approved one: three ran for a
    job of two, on the liar's word. Now only an execution stored as asked pre-approved is: the liar's ask is
    refused and the node told to drop it."""
    from bacalhau.testing import free_port

    req_cfg = node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,), serve_api=False, swarm_port=free_port(),
                          bid_timeout=60.0)     # the liar's unanswered ask is still open when the requester stops
    first = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        async def requester_until_stopped(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with first:
                async with trio.open_nursery() as inner:
                    task_status.started(await inner.start(Node(req_cfg).run))

        req = await nursery.start(requester_until_stopped)
        computes = [await nursery.start(Node(node_config(tmp_path / name, node_types=(NodeType.COMPUTE,),
                                                         serve_api=False, engines=("noop",),
                                                         peers=(req.addrs()[0],))).run)
                    for name in ("a", "b", "liar")]
        liar = computes[2]
        approved = liar.transport.handlers[m.ASK_FOR_BID_APPROVED]
        ack = m.Envelope(result=m.Ack().model_dump(mode="json")).model_dump_json().encode()

        async def runs_it_unasked(peer_id: str, payload: bytes) -> bytes:
            await approved(peer_id, payload)     # the same request: taken as if pre-approved, run at once
            return ack                           # and no bid, ever

        liar.transport.handlers[m.ASK_FOR_BID] = runs_it_unasked
        with trio.fail_after(15):
            while len(req.requester.nodes.alive()) < 3:
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60), concurrency=2))
        with trio.fail_after(15):
            while True:
                executions = (await req.requester.store.get_job(job.id)).executions
                running = [e for e in executions if e.state == S.RUNNING]
                asked = [e for e in executions if e.node_id == liar.node_id and e.state == S.ASKED_FOR_BID]
                if len(running) == 2 and asked and await _state_on(liar, asked[0].id) == S.RUNNING:
                    break
                await req.requester.wait_for_change(job.id, 0.2)
        [lie] = asked
        first.cancel()
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        # back knowing its nodes' addresses: one heard through another's gossip before it redials is reachable
        again = await nursery.start(Node(replace(req_cfg, peers=tuple(c.addrs()[0] for c in computes))).run)
        with trio.fail_after(20):       # the liar's ask is looked at after the restart
            while (await again.requester.store.get_execution(lie.id)).state == S.ASKED_FOR_BID:
                await again.requester.wait_for_change(job.id, 0.2)
        ex = await again.requester.store.get_execution(lie.id)
        assert ex.state == S.BID_REJECTED, (ex.state, ex.reason)
        assert "only asked to bid on" in ex.reason
        with trio.fail_after(10):       # and the node told to drop it
            while await _state_on(liar, lie.id) != S.CANCELLED:
                await trio.sleep(0.05)
        done = await again.requester.store.get_job(job.id)
        assert sum(e.state.active for e in done.executions) == 2, [(e.node_id[-6:], e.state, e.reason) for e in done.executions]
        assert done.state == JobState.IN_PROGRESS
        nursery.cancel_scope.cancel()


async def test_a_jobs_db_of_layout_3_opens_knowing_its_pre_approved_executions_in_flight(tmp_path: Path) -> None:
    """A repo the layout before the flag wrote (version 3: pre-approved executions known by their reason's first
    words): opened, the flag is inferred once from those words, so a restarted requester still takes the
    one callback of its pre-approved executions in flight; the reasons `describe` shows are unchanged."""
    path = tmp_path / "jobs.db"
    spec = JobSpec(engine=Engine.NOOP).model_dump_json()
    rows = {   # execution -> (state, reason), each of its own job in progress
        "pre-running": ("running", "running (pre-approved)"),
        "pre-accepted": ("bid_accepted", "bid accepted (pre-approved; seen after a restart)"),
        "old-flow": ("running", "running"),
        "asked": ("asked_for_bid", "asked for a bid"),
        "ended": ("completed", "running (pre-approved)"),     # a finished job's: not one in flight
    }
    ids = {name: str(uuid.uuid4()) for name in rows}
    with sqlite3.connect(path) as conn:
        conn.executescript(job_store.SCHEMA)
        for migration in (QUARANTINE, job_store.INDEXES, job_store.SIGNATURES):
            conn.executescript(migration)
        conn.execute("PRAGMA user_version=3")
        for name, (state, reason) in rows.items():
            job_id = str(uuid.uuid4())
            conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)",
                         (job_id, spec, "completed" if state == "completed" else "in_progress", "", "c", 1.0, 2.0))
            conn.execute("INSERT INTO executions VALUES (?,?,?,?,?,?,?,?,?)",
                         (ids[name], job_id, "node-a", state, reason, None, "", 1.0, 2.0))
    conn.close()
    store = JobStore(path)
    try:
        assert await store.preapproved() == {ids["pre-running"], ids["pre-accepted"]}
        for name, (state, reason) in rows.items():
            ex = await store.get_execution(ids[name])
            assert (ex.state.value, ex.reason) == (state, reason)
        # from here on the flag is the key, not the words: an execution written with them and no flag is not
        # one, and one asked pre-approved, then the old way (its node of before that ask), is no longer one
        job = Job(spec=JobSpec(engine=Engine.NOOP))
        await store.create_job(job)
        worded = Execution(job_id=job.id, node_id="node-b", state=S.ASKED_FOR_BID)
        await store.create_execution(worded, "bid accepted (pre-approved)")
        flagged, fell_back = (Execution(job_id=job.id, node_id=n, state=S.ASKED_FOR_BID) for n in ("c", "d"))
        for ex in (flagged, fell_back):
            await store.create_execution(ex, "asked for a bid", preapproved=True)
        await store.asked_the_old_way(fell_back.id)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(job_store.MIGRATIONS) == 4
    finally:
        conn.close()
    store = JobStore(path)     # opened again: the flag as stored, not inferred again
    try:
        assert await store.preapproved() == {ids["pre-running"], ids["pre-accepted"], flagged.id}
    finally:
        store.close()
