"""An attacker's read of two of the lead's commits: a plain job's first ask chosen at submit and written with
the job (a023e31), and a pre-approved execution written accepted and running in one write, its capacity taken
before (09d57a7). Each test is the attack that worked on them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.proxies import ComputeProxy
from bacalhau.errors import RemoteError, ReplayedSignature
from bacalhau.models import Engine, Job, JobSpec, NoopSpec, Resources, new_id
from bacalhau.requester import silent as silent_mod
from tests.hostile.test_review_fixes import _cluster, _ended


async def _never(peer_id: str, payload: bytes) -> bytes:
    await trio.sleep_forever()
    raise AssertionError


async def test_a_burst_of_submits_puts_one_job_not_half_of_them_on_a_node_on_probation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose ask went unanswered is, once its time out is up, asked one job at a time until it answers
    (requester/silent.py). The first ask chosen at submit marked that probe only after the job's write, so every
    submit ranked during that write saw the node free to probe: a burst of 12 put 6 jobs on a silent node, each
    then waiting the whole call timeout. Now the probe is marked as the node is chosen: one job."""
    monkeypatch.setattr(silent_mod, "SILENT_FOR", 0.05)
    async with _cluster(tmp_path, computes=2, call_timeout=1.0) as (req, (mute, good)):
        mute.transport.handlers[m.ASK_FOR_BID_APPROVED] = _never
        mute.transport.handlers[m.ASK_FOR_BID] = _never
        requester = req.requester
        assert requester is not None
        requester._silent.unanswered(mute.node_id)       # as its ask timing out does
        with trio.fail_after(5):
            while mute.node_id in requester._silent.left_out():
                await trio.sleep(0.02)
        jobs = []

        async def submit() -> None:
            jobs.append(await requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n"))))

        async with trio.open_nursery() as burst:
            for _ in range(12):
                burst.start_soon(submit)
        first = {}
        with trio.fail_after(5):
            while len(first) < len(jobs):
                for j in jobs:
                    executions = (await requester.store.get_job(j.id, full=False)).executions
                    if executions:
                        first[j.id] = executions[0].node_id
                await trio.sleep(0.01)
        on_mute = [job_id for job_id, node_id in first.items() if node_id == mute.node_id]
        assert len(on_mute) == 1, f"{len(on_mute)} of {len(jobs)} jobs asked of the node on probation"


async def test_a_refused_submit_does_not_leave_a_node_on_probation_left_out_for_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe marked at submit is taken back when the submit's write is refused (here a replayed
    signature: any client can send one): it was never sent, and a probe never answered would keep the node
    out of placement for the requester's life (guards the fix above, which marks the probe before the write)."""
    monkeypatch.setattr(silent_mod, "SILENT_FOR", 0.05)
    async with _cluster(tmp_path, computes=2, call_timeout=1.0) as (req, (mute, good)):
        requester = req.requester
        assert requester is not None
        spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n"))
        await _ended(req, (await requester.submit(spec, signature=("sig-1", time.time()))).id)
        requester._silent.unanswered(mute.node_id)
        requester._silent.unanswered(good.node_id)      # both on probation: the first ask is a probe either way
        with trio.fail_after(5):
            while requester._silent.left_out():
                await trio.sleep(0.02)
        with pytest.raises(ReplayedSignature):
            await requester.submit(spec, signature=("sig-1", time.time()))
        assert requester._silent.left_out() == set()


async def test_a_requesters_asks_that_fail_or_are_cancelled_leave_the_nodes_capacity_as_it_was(tmp_path: Path) -> None:
    """09d57a7 takes a pre-approved execution's capacity before its write and gives it back on every way the
    ask can end without a run. The attacks a requester peer can make on that: ten asks for one id at once (one
    runs, the other nine are refused by the write), an ask whose cancel came first, asks the node refuses, a
    cancel of the one running. None leaks (this passes on main as on this branch; kept as the record of the
    attack), and the node reports its whole capacity free once nothing runs."""
    async with _cluster(tmp_path, computes=1) as (req, (node,)):
        compute = node.compute
        assert compute is not None
        proxy = ComputeProxy(req.transport, 5)
        size = Resources(cpu=round(compute.capacity.total.cpu / 4, 3), memory=1 << 20)    # room for two

        def ask(execution_id: str, resources: Resources = size) -> m.AskForBidRequest:
            job = Job(spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=30), resources=resources))
            return m.AskForBidRequest(execution_id=execution_id, requester_id=req.node_id, job=job)

        def used() -> tuple[float, int]:
            return round(compute.capacity.used.cpu, 6), compute.capacity.used.memory

        one = new_id()
        replies: list[m.BidResult | RemoteError] = []

        async def ask_one() -> None:
            try:
                replies.append(await proxy.ask_for_bid_approved(node.node_id, ask(one)))
            except RemoteError as exc:
                replies.append(exc)

        async with trio.open_nursery() as burst:
            for _ in range(10):
                burst.start_soon(ask_one)
        assert sum(isinstance(r, m.BidResult) and r.accepted for r in replies) == 1, replies
        assert used() == (size.cpu, size.memory)
        ahead = new_id()
        with pytest.raises(RemoteError):
            await proxy.cancel(node.node_id, ahead, "given up")
        assert not (await proxy.ask_for_bid_approved(node.node_id, ask(ahead))).accepted
        too_big = ask(new_id(), Resources(cpu=1000, memory=1 << 20))
        assert not (await proxy.ask_for_bid_approved(node.node_id, too_big)).accepted
        assert used() == (size.cpu, size.memory)
        await proxy.cancel(node.node_id, one, "enough")
        with trio.fail_after(5):
            while used() != (0.0, 0):
                await trio.sleep(0.02)
        info = compute.node_info([], [])
        assert round(info.capacity_free.cpu, 6) == info.capacity_total.cpu
        assert info.capacity_free.memory == info.capacity_total.memory
