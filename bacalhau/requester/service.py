"""The requester: takes jobs, picks nodes, drives every execution's state machine through the bprotocol
and retries failed attempts on other nodes."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVarTuple

import trio
from pydantic import BaseModel

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.proxies import ComputeProxy
from bacalhau.bprotocol.transport import AnyModelHandler, Transport, typed_handler
from bacalhau.compute.callbacks import deliver
from bacalhau.config import DEFAULT_RECONCILE_INTERVAL
from bacalhau.errors import (
    BacalhauError,
    ProtocolError,
    RemoteError,
    StateError,
    TransportError,
    UnsupportedProtocolError,
)
from bacalhau.log_frames import LogEvent
from bacalhau.models import Execution, ExecutionState, Job, JobSpec, JobState, NodeInfo, RunResult
from bacalhau.requester.logs import LogReader
from bacalhau.requester.nodes import Load, NodeTable
from bacalhau.requester.ranking import NO_COMPUTE_NODE, SAMPLE, rank_loads
from bacalhau.requester.retry import MaxAttempts, RetryStrategy, attempts_summary, chain_for, decide
from bacalhau.requester.silent import SilentNodes
from bacalhau.requester.store import ASKED_REASON, JobStore

log = logging.getLogger(__name__)
S = ExecutionState
Ts = TypeVarTuple("Ts")
NOT_NEEDED = "not needed: the job had enough accepted bids"
# the requester stopped between writing an ask down and sending it: no attempt was made, the node is asked again
NEVER_SENT = "the ask never reached the node: the requester stopped first"
NOT_TRIED = (NOT_NEEDED, NEVER_SENT)    # bids rejected for these do not rule the node out for the job
# what `describe` shows of an execution asked pre-approved while its bid is accepted, and its next step in the
# same write (_take_bid); a restarted requester knows such an execution by its stored flag, not by these
PREAPPROVED_BID = "bid accepted (pre-approved"
PREAPPROVED_RUNNING = "running (pre-approved)"
PREAPPROVED_SETTLE = 0.05   # seconds a pre-approved bid waits for its run's end, to be written with it (_settle)
BID_OVERASK = 2        # nodes asked per execution still needed, where a race between bids is worth it
LOST_EXECUTION_CANCEL_WINDOW = 3600.0   # a lost node back within this is told to drop what was written off
# expiry passes (TTL/2 each) a requester hearing no compute node at all holds their executions, taking itself
# for the one cut off; past that, they are taken as dead (every node of a cluster may die; its jobs then fail)
CUT_OFF_PASSES = 12
STALLED = (S.BID_ACCEPTED, S.RUNNING, S.PUBLISHING)   # states a lost callback can leave an execution in


class Requester:
    def __init__(
        self, *, node_id: str, transport: Transport, store: JobStore, nodes: NodeTable, call_timeout: float,
        bid_timeout: float, retry_chain: list[RetryStrategy] | None = None, max_attempts: int = 3,
        reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL,
    ) -> None:
        self._reconcile_interval = reconcile_interval
        self._checking: set[str] = set()      # executions whose node is being asked how they go
        self.node_id = node_id
        self.store = store
        self.nodes = nodes
        self._compute = ComputeProxy(transport, call_timeout)
        self._logs = LogReader(store, transport, call_timeout, self.wait_for_change)
        self._bid_timeout = bid_timeout
        self._retry_chain: list[RetryStrategy] = retry_chain if retry_chain is not None else [MaxAttempts(max_attempts)]
        # a job's lock lives while a task holds or waits for it: finished jobs leave nothing behind
        self._job_locks: weakref.WeakValueDictionary[str, trio.Lock] = weakref.WeakValueDictionary()
        self._awaiting_bid: dict[str, trio.CancelScope] = {}   # execution id -> its bid deadline's scope
        # executions asked pre-approved (bprotocol/messages.py), until they end: only theirs is an on_run_published
        # taken, and a node's word that it runs what it was only asked (their rows say so: read again at a start)
        self._preapproved: set[str] = set()
        self._replied: dict[str, float] = {}     # execution id -> when its pre-approved ask's yes came (_settle)
        self._old_flow: set[str] = set()     # nodes that do not speak the pre-approved ask (older versions)
        self._silent = SilentNodes()           # nodes whose asks went unanswered: left out of placement a while
        self._waiting_pass: trio.Event | None = None           # set when a pass over waiting jobs is due
        self._changed: dict[str, trio.Event] = {}
        self.on_change: list[Callable[[str], None]] = []      # told a job's id at each change (the dashboard)
        self._nursery: trio.Nursery | None = None
        self._started_at = 0.0
        callbacks: list[tuple[str, type[BaseModel], AnyModelHandler]] = [
            (m.ON_BID_COMPLETE, m.BidResult, self._on_bid_complete),
            (m.ON_RUN_COMPLETE, m.RunComplete, self._on_run_complete),
            (m.ON_PUBLISH_COMPLETE, m.PublishComplete, self._on_publish_complete),
            (m.ON_RUN_PUBLISHED, m.RunPublished, self._on_run_published),
            (m.ON_CANCEL_COMPLETE, m.CancelComplete, self._on_cancel_complete),
            (m.ON_COMPUTE_FAILURE, m.ComputeFailure, self._on_compute_failure),
        ]
        for proto, model, fn in callbacks:
            transport.register(proto, typed_handler(model, self._from_its_node(fn)))

    def _lock(self, job_id: str) -> trio.Lock:
        lock = self._job_locks.get(job_id)
        if lock is None:
            lock = self._job_locks[job_id] = trio.Lock()
        return lock

    @property
    def awaiting_bids(self) -> int:
        """Asks for a bid whose deadline is still running (each holds one task until its bid comes)."""
        return len(self._awaiting_bid)

    def _from_its_node(self, fn: AnyModelHandler) -> AnyModelHandler:
        """Callbacks are taken only from the node that holds the execution (any cluster member can call)."""
        async def checked(peer_id: str, msg: Any) -> BaseModel:
            node_id, job_id = await self.store.execution_holder(msg.execution_id)
            if peer_id != msg.node_id or node_id != peer_id or job_id != msg.job_id:
                raise ProtocolError(f"node {peer_id} does not hold execution {msg.execution_id}")
            return await fn(peer_id, msg)

        return checked

    async def run(self, *, task_status: trio.TaskStatus[Requester] = trio.TASK_STATUS_IGNORED) -> None:
        self._started_at = trio.current_time()
        unfinished = await self.store.jobs_in_states([JobState.PENDING, JobState.IN_PROGRESS])
        self._preapproved |= await self.store.preapproved()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for job in unfinished:
                await self._reconcile_after_restart(job.id)
            nursery.start_soon(self._expire_nodes_loop)
            nursery.start_soon(self._reconcile_loop)
            task_status.started(self)
            await trio.sleep_forever()

    # -- the API's side -------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, client_id: str = "", *, signature: tuple[str, float] | None = None
                     ) -> Job:
        """`signature`: the signed submit's (signature, signed at), recorded with the job: a replay is refused
        (ReplayedSignature) and makes no job."""
        job = Job(spec=spec, client_id=client_id)
        # a plain job's one execution is chosen now and written with the job: one durable write less in series
        # before its ask (a job's first ask waited for its own commit, ~a tenth of a job's time under load)
        first = self._first_ask(job)
        # placed as it is chosen, as _ask_for_bids does: submits ranked during this write see it
        probe = first is not None and self._place(first, sure=True)
        try:
            # not cancelled once its write is taken (db.py): a submit that returns here has it on disk and asks
            await self.store.create_job(job, signature=signature, execution=first,
                                        preapproved=first is not None and first.id in self._preapproved)
        except BaseException:
            if first is not None:      # never asked: not the node's load
                self.nodes.ended(first.node_id, first.id)
                self._preapproved.discard(first.id)
                if probe:
                    self._silent.not_sent(first.node_id)
            raise
        log.info("job %s submitted", job.id)
        self._notify(job.id)
        if first is None:
            self._spawn(self._evaluate, job.id)
        else:
            self._spawn(self._ask_one, job.model_copy(update={"executions": [first]}), first)
        return job

    def _first_ask(self, job: Job) -> Execution | None:
        """The execution a new job needs, of the best ranked node, if it needs one and one node is asked (see
        _ask_for_bids), not yet placed; None leaves the job to _evaluate (fan-out, inputs to fetch, no node
        to ask yet)."""
        if not self._sure(job):
            return None
        candidates, _ = self._rank(job, set())
        if not candidates:
            return None
        return Execution(job_id=job.id, node_id=candidates[0].info.node_id, state=S.ASKED_FOR_BID)

    def _place(self, ex: Execution, *, sure: bool) -> bool:
        """An execution about to be asked, counted at once (the next job ranked, even before any await, sees
        it): its node's load, asked pre-approved when it is the one needed (`sure`) of a node that takes that
        ask, and a node on probation's probe. True if it is that probe (SilentNodes.asked)."""
        self.nodes.placed(ex.node_id, ex.id)
        if sure and ex.node_id not in self._old_flow:
            # the one execution needed, asked of one node: no other bid to wait for or choose between
            self._preapproved.add(ex.id)
        return self._silent.asked(ex.node_id)

    @staticmethod
    def _sure(job: Job) -> bool:
        """One execution needed and no node holding inputs to race for: the ranking's first is asked alone."""
        return job.spec.concurrency == 1 and not any(i.source.startswith("ipfs://") for i in job.spec.inputs)

    def _rank(self, job: Job, exclude: set[str]) -> tuple[list[Load], str]:
        """Nodes that can take the job, best first; silent ones left out unless none other can."""
        silent = self._silent.left_out() - exclude
        candidates, why = rank_loads(job, self.nodes.sample(), exclude | silent, sample=SAMPLE)
        if not candidates and silent:     # none but silent ones: asked all the same
            candidates, why = rank_loads(job, self.nodes.sample(), exclude, sample=SAMPLE)
        return candidates, why

    async def cancel(self, job_id: str, reason: str = "cancelled by the user") -> Job:
        async with self._lock(job_id):
            job = await self.store.get_job(job_id, full=False)
            if job.state.terminal:
                raise StateError(f"job {job_id} is already {job.state.value}")
            settling = [e.id for e in job.executions if e.id in self._replied and e.state == S.ASKED_FOR_BID]
            for execution_id in settling:
                # its yes came, its bid waits for the run's end (_settle): it runs, so its bid is taken and the
                # job in progress before the cancel, as the history would say had the bid not waited
                await self._take_bid(job_id, execution_id, f"{PREAPPROVED_BID})")
            if settling:
                job = await self.store.get_job(job_id, full=False)
            await self.store.update_job(job_id, job.state, JobState.CANCELLED, reason)
            for ex in job.executions:
                if not ex.state.terminal:
                    await self._set(ex.id, None, S.CANCELLED, reason)
                    self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, reason)
        self._notify(job_id)
        return await self.store.get_job(job_id)

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        event = self._changed.get(job_id)
        if event is None:      # not setdefault: a trio.Event made on every wait only to be thrown away
            event = self._changed[job_id] = trio.Event()
        with trio.move_on_after(timeout):
            await event.wait()

    def alive_nodes(self) -> list[NodeInfo]:
        return self.nodes.alive()

    def read_logs(self, job_id: str, *, execution_id: str = "", stdout_offset: int = 0, stderr_offset: int = 0,
                  follow: bool = True) -> AsyncGenerator[LogEvent, None]:
        """The job's log events, live from the node that runs it, across retries (requester/logs.py)."""
        return self._logs.read(job_id, execution_id=execution_id, stdout_offset=stdout_offset,
                               stderr_offset=stderr_offset, follow=follow)

    def node_joined(self, info: NodeInfo) -> None:
        """A node appeared: jobs waiting for one get another look (one pass at a time, however many nodes
        join meanwhile: a thousand joining are not a thousand passes over the waiting jobs)."""
        self._old_flow.discard(info.node_id)   # back after a while: perhaps upgraded
        if self._waiting_pass is not None:
            self._waiting_pass.set()
            return
        self._waiting_pass = trio.Event()
        self._waiting_pass.set()
        self._spawn(self._evaluate_waiting)

    # -- callbacks (compute -> requester) -------------------------------------------------------------------

    async def _on_bid_complete(self, peer_id: str, msg: m.BidResult) -> m.Ack:
        async with self._lock(msg.job_id):
            if not msg.accepted:
                await self._set(msg.execution_id, (S.ASKED_FOR_BID,), S.BID_REJECTED, msg.reason)
            else:
                job = await self.store.get_job(msg.job_id, full=False)
                taken = sum(1 for e in job.executions if e.state.active or e.state == S.COMPLETED)
                if job.state.terminal or taken >= job.spec.concurrency:
                    reason = NOT_NEEDED if not job.state.terminal else f"the job is {job.state.value}"
                    await self._set(msg.execution_id, (S.ASKED_FOR_BID,), S.BID_REJECTED, reason)
                    self._spawn(self._tell_compute, "bid_rejected", msg.node_id, msg.execution_id, reason)
                else:
                    # the job's first accepted bid moves it to in progress in the same transaction
                    started = (JobState.PENDING, JobState.IN_PROGRESS, "bid accepted")
                    await self._set(msg.execution_id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "bid accepted",
                                    job_to=started if job.state == JobState.PENDING else None)
                    self._spawn(self._accept_bid, msg.node_id, msg.execution_id, job.id)
        if not msg.accepted:
            self._spawn(self._evaluate, msg.job_id)
        self._notify(msg.job_id)
        return m.Ack()

    async def _on_run_complete(self, peer_id: str, msg: m.RunComplete) -> m.Ack:
        async with self._lock(msg.job_id):
            if msg.execution_id in self._preapproved:
                await self._accept_overtaken(msg.job_id, msg.execution_id)
            if msg.result.error:
                # The job ran and hit its own limit (e.g. its timeout): not the node's fault, no retry.
                await self._set(msg.execution_id, (S.BID_ACCEPTED, S.RUNNING), S.FAILED, msg.result.error,
                                result=msg.result)
                job = await self.store.get_job(msg.job_id, full=False)
                if not job.state.terminal:
                    await self.store.update_job(job.id, job.state, JobState.FAILED, msg.result.error)
            elif msg.result.exit_code != 0 and (await self.store.get_job(msg.job_id, full=False)).spec.retry.on_nonzero_exit:
                reason = f"exited with code {msg.result.exit_code}; the job asks to be retried"
                await self._set(msg.execution_id, (S.BID_ACCEPTED, S.RUNNING), S.FAILED, reason, result=msg.result)
                self._spawn(self._tell_compute, "result_rejected", msg.node_id, msg.execution_id, reason)
                self._spawn(self._evaluate, msg.job_id)
            else:
                await self._set(msg.execution_id, (S.BID_ACCEPTED, S.RUNNING), S.PUBLISHING,
                                f"ran, exit code {msg.result.exit_code}", result=msg.result)
                if msg.execution_id not in self._preapproved:    # a pre-approved one publishes by itself
                    self._spawn(self._tell_compute, "result_accepted", msg.node_id, msg.execution_id)
        self._notify(msg.job_id)
        return m.Ack()

    async def _on_publish_complete(self, peer_id: str, msg: m.PublishComplete) -> m.Ack:
        return await self._published(peer_id, msg.job_id, msg.execution_id, msg.result_ref, (S.PUBLISHING,),
                                     "result published")

    async def _on_run_published(self, peer_id: str, msg: m.RunPublished) -> m.Ack:
        """A pre-approved execution ran and is published (bprotocol/messages.py): what on_run_complete and
        on_publish_complete would do, in one transaction. Taken only for an execution this requester asked
        pre-approved: for any other, the node was to wait for result_accepted (a peer cannot skip the steps)."""
        if msg.execution_id not in self._preapproved:
            raise ProtocolError(f"execution {msg.execution_id} is not one asked pre-approved and still live: its "
                                "run and its publication are reported apart")
        return await self._published(peer_id, msg.job_id, msg.execution_id, msg.result_ref,
                                     (S.BID_ACCEPTED, S.RUNNING, S.PUBLISHING),
                                     f"ran, exit code {msg.result.exit_code}; result published", result=msg.result)

    async def _published(self, peer_id: str, job_id: str, execution_id: str, result_ref: str,
                         expected: tuple[ExecutionState, ...], reason: str, *, result: RunResult | None = None
                         ) -> m.Ack:
        """An execution's result is published (a publish-complete, or with its `result` a pre-approved
        run-published, which may overtake the ask's reply: its bid is taken first)."""
        from bacalhau.ipfs.result_ref import parse_result_ref

        try:
            parse_result_ref(result_ref)     # what downloads will trust: ipfs://<CID> and nothing else
        except ProtocolError as exc:
            async with self._lock(job_id):
                if result is not None:
                    await self._accept_overtaken(job_id, execution_id)
                await self._set(execution_id, expected, S.FAILED,
                                f"node {peer_id} published a bad result reference: {exc}")
            await self._evaluate(job_id)
            raise
        async with self._lock(job_id):
            job = await self.store.get_job(job_id, full=False)
            steps: dict[str, Any] = {}
            if result is not None and any(e.id == execution_id and e.state == S.ASKED_FOR_BID for e in job.executions):
                # it overtook the ask's reply, or came while the reply waited for it (_ask_approved): the node
                # said yes, so its bid is taken, when the reply came (now if it has not), in this same write
                steps = _bid_steps(job, self._replied.get(execution_id) or time.time())
                expected = (S.ASKED_FOR_BID,)
            # the execution that completes its job completes it in the same transaction (what _evaluate would
            # do next, one commit earlier); with others still live, _evaluate cancels them first
            done = 1 + sum(1 for e in job.executions if e.state == S.COMPLETED and e.id != execution_id)
            others = any(not e.state.terminal and e.id != execution_id for e in job.executions)
            ends = not job.state.terminal and not others and done >= job.spec.concurrency
            state = JobState.IN_PROGRESS if steps.get("job_first") else job.state
            await self._set(execution_id, expected, S.COMPLETED, reason, result=result, result_ref=result_ref,
                            job_to=(state, JobState.COMPLETED, "") if ends else None, **steps)
        if ends:
            self._notify(job_id)
            return m.Ack()
        await self._evaluate(job_id)
        return m.Ack()

    async def _settle(self, ex: Execution) -> None:
        """A yes to a pre-approved ask: the run's end often follows at once (a short job), and is then written
        with the bid taken, in one write (_published), not the bid first and the end after it, two commits in
        series. So the bid waits up to PREAPPROVED_SETTLE for it (a longer run shows as running that much
        later); the execution leaving ASKED_FOR_BID any way ends the wait (_set)."""
        self.nodes.answered(ex.node_id, ex.id)
        if (await self.store.get_execution(ex.id)).state != S.ASKED_FOR_BID:
            return
        self._replied[ex.id] = time.time()      # dropped at the end of _ask_approved
        settle = trio.CancelScope(deadline=trio.current_time() + PREAPPROVED_SETTLE)
        self._awaiting_bid[ex.id] = settle
        try:
            with settle:
                await trio.sleep_forever()
        finally:
            if self._awaiting_bid.get(ex.id) is settle:
                del self._awaiting_bid[ex.id]

    async def _accept_overtaken(self, job_id: str, execution_id: str) -> None:
        """(The job's lock held.) A pre-approved execution's outcome can overtake the ask's reply: the node said
        yes, so the bid is taken here (the job to in progress with it, as the reply would)."""
        ex = await self.store.get_execution(execution_id)
        if ex.state == S.ASKED_FOR_BID:
            await self._take_bid(job_id, execution_id, f"{PREAPPROVED_BID})")

    async def _take_bid(self, job_id: str, execution_id: str, reason: str) -> None:
        """(The job's lock held.) The execution's pre-approved bid accepted and, as the node started it at once,
        running (what `describe` shows while it runs, as the old flow's bid_accepted call led to), in one write;
        the job's first moves it to in progress in the same transaction. Both at the time the node's yes came
        where that is known (a bid that waited for its run's end in vain: _settle)."""
        job = await self.store.get_job(job_id, full=False)
        started = (JobState.PENDING, JobState.IN_PROGRESS, "bid accepted") if job.state == JobState.PENDING else None
        await self._set(execution_id, (S.ASKED_FOR_BID, S.NEW), S.BID_ACCEPTED, reason, job_to=started,
                        then=(S.RUNNING, PREAPPROVED_RUNNING if reason.startswith(PREAPPROVED_BID) else "running"),
                        at=self._replied.get(execution_id))

    async def _on_cancel_complete(self, peer_id: str, msg: m.CancelComplete) -> m.Ack:
        return m.Ack()

    async def _on_compute_failure(self, peer_id: str, msg: m.ComputeFailure) -> m.Ack:
        async with self._lock(msg.job_id):
            ex = await self.store.get_execution(msg.execution_id)
            if ex.state.terminal:
                return m.Ack()
            await self._set(msg.execution_id, None, S.FAILED, msg.reason)
            if not msg.retry:     # the node, which holds the spec, says any node would fail it the same way
                job = await self.store.get_job(msg.job_id, full=False)
                if not job.state.terminal:
                    reason = f"{msg.reason} (the job's own doing: not retried on another node)"
                    await self._fail_job(job, reason)
                    for ex in job.executions:
                        if not ex.state.terminal and ex.id != msg.execution_id:
                            await self._set(ex.id, None, S.CANCELLED, "another execution failed: " + reason)
                            self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, "the job failed")
                return m.Ack()
        log.info("execution %s of job %s failed on %s: %s", msg.execution_id, msg.job_id, msg.node_id, msg.reason)
        # in a task of its own: the reply is not held up by scheduling (the call has a timeout; a retry's
        # backoff can be longer, and a cancelled handler lost the retry)
        self._spawn(self._evaluate, msg.job_id)
        return m.Ack()

    # -- scheduling -----------------------------------------------------------------------------------------

    async def _evaluate(self, job_id: str) -> None:
        """Look at a job and do the next thing it needs: finish it, fail it, or ask nodes for bids (after a
        retry's backoff, in a task of its own: whoever calls this is never held up by the backoff)."""
        async with self._lock(job_id):
            job = await self.store.get_job(job_id, full=False)
            if job.state.terminal:
                return
            done = [e for e in job.executions if e.state == S.COMPLETED]
            live = [e for e in job.executions if not e.state.terminal]
            if len(done) >= job.spec.concurrency:
                for ex in live:
                    await self._set(ex.id, None, S.CANCELLED, "the job completed")
                    self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, "the job completed")
                await self.store.update_job(job_id, job.state, JobState.COMPLETED, "")
                self._notify(job_id)
                return
            needed = job.spec.concurrency - len(done) - len(live)
            if needed <= 0:
                return
            if any(e.state == S.FAILED for e in job.executions):
                decision = decide(chain_for(job, self._retry_chain), job)
                if not decision.retry:
                    await self._fail_job(job, f"{decision.reason}: {attempts_summary(job)}")
                    return
                if decision.delay:
                    self._spawn(self._ask_for_bids_after, job_id, decision.delay)
                    return
            await self._ask_for_bids(job, needed, live)

    async def _ask_for_bids_after(self, job_id: str, delay: float) -> None:
        await trio.sleep(delay)
        async with self._lock(job_id):
            job = await self.store.get_job(job_id, full=False)
            live = [e for e in job.executions if not e.state.terminal]
            done = [e for e in job.executions if e.state == S.COMPLETED]
            needed = job.spec.concurrency - len(done) - len(live)
            if not job.state.terminal and needed > 0:
                await self._ask_for_bids(job, needed, live)

    async def _ask_for_bids(self, job: Job, needed: int, live: list[Execution]) -> None:
        exclude = {e.node_id for e in job.executions if e.state == S.FAILED
                   or (e.state == S.BID_REJECTED and e.reason not in NOT_TRIED)} | {e.node_id for e in live}
        candidates, why = self._rank(job, exclude)
        if not candidates:
            if live:
                return  # bids or runs in flight may still do it
            waited = trio.current_time() - self._started_at
            if why == NO_COMPUTE_NODE and waited < self.nodes.ttl * 2:
                # just started: compute nodes reconnect and gossip within a TTL or two; look again then
                self._spawn(self._evaluate_later, job.id, self.nodes.ttl * 2 - waited)
                return
            failures = attempts_summary(job)
            refused = "; ".join(f"node {e.node_id[-8:]} refused: {e.reason}" for e in job.executions
                                if e.state == S.BID_REJECTED and e.reason not in NOT_TRIED)
            details = "; ".join(x for x in (f"earlier attempts: {failures}" if failures else "", refused) if x)
            await self._fail_job(job, f"{why}; {details}" if details else why)
            return
        # Ask as many nodes as executions are needed: a node bids whatever its load (what it cannot run yet it
        # queues), so asking a second only to reject its bid costs three calls and an execution written three
        # times; the ranking already put the least loaded first. Ask more where a race is worth it: a job that
        # fans out, or one whose inputs some node already holds (that node bids first). A cluster whose nodes
        # are all full was raced too, but its bids came as fast from every node: 1.85 nodes asked a job in a
        # burst of 600 on 3 nodes (benchmarks/cluster_throughput.py), nearly every ask past the first 48.
        sure = self._sure(job)
        asked = [Execution(job_id=job.id, node_id=load.info.node_id, state=S.ASKED_FOR_BID)
                 for load in candidates[: needed if sure else needed * BID_OVERASK]]
        for ex in asked:     # all placed before any await here
            self._place(ex, sure=sure)
        for ex in asked:
            await self.store.create_execution(ex, ASKED_REASON, preapproved=ex.id in self._preapproved)
            self._spawn(self._ask_one, job, ex)
        self._notify(job.id)

    async def _ask_one(self, job: Job, ex: Execution) -> None:
        """Ask one node for a bid and wait for it until the bid timeout; the bid's arrival (or the execution
        leaving ASKED_FOR_BID any other way) cancels the wait, so the task ends with it."""
        if ex.id in self._preapproved:
            await self._ask_approved(job, ex)
            return
        req = m.AskForBidRequest(execution_id=ex.id, requester_id=self.node_id, job=job)
        deadline = trio.CancelScope()
        self._awaiting_bid[ex.id] = deadline
        try:
            try:
                # outside the deadline's scope: a bid that overtakes the ask's reply must not cut the call
                await self._compute.ask_for_bid(ex.node_id, req)
            except BacalhauError as exc:
                reason = f"ask for bid failed: {exc}"
                unanswered = isinstance(exc, TransportError)
            else:
                with deadline:
                    await trio.sleep(self._bid_timeout)
                reason = f"no bid within {self._bid_timeout:g}s"
                unanswered = True
        finally:
            self._awaiting_bid.pop(ex.id, None)
        if deadline.cancel_called:
            self._silent.answered(ex.node_id)
            return
        if unanswered:
            self._silent.unanswered(ex.node_id)
        else:
            self._silent.answered(ex.node_id)
        await self._execution_failed(job.id, ex.id, (S.ASKED_FOR_BID,), S.BID_REJECTED, reason)

    async def _ask_approved(self, job: Job, ex: Execution) -> None:
        """The pre-approved ask (bprotocol/messages.py): its reply is the bid, and a yes is already running."""
        req = m.AskForBidRequest(execution_id=ex.id, requester_id=self.node_id, job=job)
        try:
            bid = await self._compute.ask_for_bid_approved(ex.node_id, req)
        except UnsupportedProtocolError:
            log.info("node %s does not take pre-approved asks (an older version): asking it the old way", ex.node_id)
            self._old_flow.add(ex.node_id)
            self._preapproved.discard(ex.id)
            await self.store.asked_the_old_way(ex.id)
            await self._ask_one(job, ex)
            return
        except BacalhauError as exc:
            # only the reply may have been lost, the node running it: ask before writing the attempt off
            if not isinstance(exc, TransportError) or not await self._took_it(ex.node_id, ex.id):
                if isinstance(exc, TransportError):
                    self._silent.unanswered(ex.node_id)
                else:
                    self._silent.answered(ex.node_id)
                await self._execution_failed(job.id, ex.id, (S.ASKED_FOR_BID,), S.BID_REJECTED,
                                             f"ask for bid failed: {exc}")
                if isinstance(exc, TransportError):    # it may still come: dropped where it does
                    self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, "ask for bid failed")
                return
            bid = m.BidResult(execution_id=ex.id, job_id=job.id, node_id=ex.node_id, accepted=True)
        self._silent.answered(ex.node_id)
        if (bid.execution_id, bid.job_id, bid.node_id) != (ex.id, job.id, ex.node_id):
            # an answer about something else than what was asked: not this ask's bid
            reason = f"node {ex.node_id} answered the ask with a bid for another execution"
            log.warning("%s (execution %s of job %s)", reason, ex.id, job.id)
            await self._execution_failed(job.id, ex.id, None, S.FAILED, reason)
            self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, reason)
            return
        try:
            if bid.accepted:
                await self._settle(ex)
            await self._take_reply(job, ex, bid)
        finally:
            self._replied.pop(ex.id, None)

    async def _take_reply(self, job: Job, ex: Execution, bid: m.BidResult) -> None:
        """(_ask_approved) The pre-approved ask's bid, as the execution stands once it came and settled."""
        cancel = ""
        async with self._lock(job.id):
            current = await self.store.get_execution(ex.id)
            if not bid.accepted:
                if current.state == S.ASKED_FOR_BID:
                    await self._set(ex.id, (S.ASKED_FOR_BID,), S.BID_REJECTED, bid.reason)
            elif current.state == S.ASKED_FOR_BID:
                if (await self.store.get_job(job.id, full=False)).state.terminal:
                    cancel = "the job ended"
                    await self._set(ex.id, None, S.CANCELLED, cancel)
                else:
                    await self._take_bid(job.id, ex.id, f"{PREAPPROVED_BID})")
            elif current.state in (S.CANCELLED, S.FAILED, S.BID_REJECTED):
                # given up meanwhile (a cancel, a timeout): the node started it all the same
                cancel = current.reason or current.state.value
        if cancel:
            self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, cancel)
        if not bid.accepted:
            self._spawn(self._evaluate, job.id)
        self._notify(job.id)

    async def _accept_bid(self, node_id: str, execution_id: str, job_id: str) -> None:
        try:
            await self._compute.bid_accepted(node_id, execution_id)
        except BacalhauError as exc:
            # Only the reply may have been lost, the node running it: ask before writing the attempt off and
            # running it elsewhere too (seen in the simulation: twice at once). Told to drop it, if written off.
            if not isinstance(exc, TransportError) or not await self._took_it(node_id, execution_id):
                await self._execution_failed(job_id, execution_id, (S.BID_ACCEPTED,), S.FAILED,
                                             f"bid_accepted failed: {exc}")
                self._spawn(self._tell_compute, "cancel", node_id, execution_id, "bid_accepted failed")
                return
        try:
            async with self._lock(job_id):
                await self._set(execution_id, (S.BID_ACCEPTED,), S.RUNNING, "running")
        except StateError:
            return  # it already finished (a fast job's callbacks can overtake this)
        self._notify(job_id)

    async def _took_it(self, node_id: str, execution_id: str) -> bool:
        """Whether the node has the execution accepted, or further on (False when it cannot say)."""
        try:
            status = await self._compute.execution_status(node_id, execution_id)
        except BacalhauError:
            return False
        return status.state in (S.BID_ACCEPTED, S.RUNNING, S.PUBLISHING, S.COMPLETED)

    async def _execution_failed(self, job_id: str, execution_id: str, expected: tuple[ExecutionState, ...] | None,
                                new: ExecutionState, reason: str) -> None:
        async with self._lock(job_id):
            try:
                await self._set(execution_id, expected, new, reason)
            except StateError:
                return  # moved on meanwhile: nothing to do
        self._spawn(self._evaluate, job_id)

    async def _fail_job(self, job: Job, reason: str) -> None:
        await self.store.update_job(job.id, job.state, JobState.FAILED, reason)
        log.info("job %s failed: %s", job.id, reason)
        self._notify(job.id)

    async def _tell_compute(self, call: str, node_id: str, execution_id: str, *args: str) -> None:
        """Sent again while unanswered, as a compute node's callbacks are (each is taken by compare-and-set on
        the node: a second copy changes nothing); a lost one left the execution to the reconcile pass."""
        async def send(peer_id: str, _: None) -> None:
            await getattr(self._compute, call)(peer_id, execution_id, *args)

        await deliver(send, node_id, None, what=f"{call} for execution {execution_id}")

    async def _evaluate_later(self, job_id: str, delay: float) -> None:
        await trio.sleep(delay)
        await self._evaluate(job_id)

    async def _evaluate_waiting(self) -> None:
        try:
            while self._waiting_pass is not None and self._waiting_pass.is_set():
                self._waiting_pass = trio.Event()      # a node joining from here on asks for another pass
                for job_id in await self.store.job_ids_in_states([JobState.PENDING]):
                    await self._evaluate(job_id)
        finally:
            self._waiting_pass = None

    async def _reconcile_after_restart(self, job_id: str) -> None:
        """Executions in flight when the requester stopped went on without it: ask their nodes how each
        went (callbacks sent meanwhile were lost) and catch up, so none is lost or run twice."""
        job = await self.store.get_job(job_id, full=False)
        live = [ex for ex in job.executions if not ex.state.terminal]
        for ex in live:
            self._spawn(self._reconcile_execution, job_id, ex)
        if not live:
            self._spawn(self._evaluate, job_id)

    async def _status_after_restart(self, ex: Execution) -> m.ExecutionStatus:
        """The node's word on an execution, once it is back: a node may be heard of (another node's gossip)
        before it can be reached, so a call that gets no answer is tried again until the nodes have had a few
        TTLs to come back (written off at the first, a job the node was running ran again elsewhere)."""
        patience = trio.current_time() + self.nodes.ttl * 3
        with trio.move_on_at(patience):   # nodes reconnect and gossip again after a restart
            await self.nodes.wait_for(ex.node_id)
        pause = 0.25
        while True:
            try:
                return await self._compute.execution_status(ex.node_id, ex.id)
            except TransportError:
                if trio.current_time() + pause >= patience:
                    raise
            await trio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _reconcile_execution(self, job_id: str, ex: Execution) -> None:
        try:
            status = await self._status_after_restart(ex)
        except BacalhauError as exc:
            if isinstance(exc, RemoteError) and exc.code == m.ErrorCode.NOT_FOUND and ex.state == S.ASKED_FOR_BID:
                # written down, never sent: no attempt was made on that node (with one node asked, counting it
                # one failed the job when no other node had gossiped again yet)
                await self._execution_failed(job_id, ex.id, None, S.BID_REJECTED, NEVER_SENT)
                # or sent and not yet taken: a pre-approved ask would start as it lands (the node keeps this)
                self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, NEVER_SENT)
            else:
                await self._execution_failed(job_id, ex.id, None, S.FAILED,
                                             f"lost while the requester was down: {exc}")
                if isinstance(exc, TransportError):    # it may still run there: it is retried elsewhere
                    self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, "lost while the requester was down")
            return
        # weighed against the execution as it is now, not as read before a wait of up to 3 TTLs: written off
        # meanwhile (the node lost, the job cancelled), it was accepted on a node the job had gone on without
        ex = await self.store.get_execution(ex.id)
        if ex.state.terminal:
            if ex.state != S.COMPLETED and not status.state.terminal:
                self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, ex.reason or ex.state.value)
            return
        log.info("reconciling execution %s: requester had %s, node %s says %s", ex.id, ex.state.value,
                 ex.node_id, status.state.value)
        info = dict(execution_id=ex.id, job_id=job_id, node_id=ex.node_id)
        try:
            if status.state == S.NEW and ex.state == S.BID_ACCEPTED:
                await self._accept_bid(ex.node_id, ex.id, job_id)   # the acceptance never reached the node
            elif status.state == S.NEW:
                await self._execution_failed(job_id, ex.id, None, S.BID_REJECTED, NOT_NEEDED)
                await self._tell_compute("bid_rejected", ex.node_id, ex.id, "the requester restarted")
            elif ex.state in (S.ASKED_FOR_BID, S.NEW) and ex.id not in self._preapproved and (
                    status.state in (S.BID_ACCEPTED, S.RUNNING) or _ran(status)):
                # only a pre-approved ask has a node run what the requester only asked about (a fan-out job's
                # are not: taking them ran it past its concurrency on the node's word)
                reason = f"node {ex.node_id} says it runs an execution it was only asked to bid on: not taken"
                await self._execution_failed(job_id, ex.id, (S.ASKED_FOR_BID, S.NEW), S.BID_REJECTED, reason)
                self._spawn(self._tell_compute, "cancel", ex.node_id, ex.id, reason)
            elif status.state in (S.BID_ACCEPTED, S.RUNNING) and status.result is None:
                if ex.id in self._preapproved and ex.state == S.ASKED_FOR_BID:
                    # its ask's reply was lost with the requester: the node runs it, as a pre-approved ask has it
                    async with self._lock(job_id):
                        await self._take_bid(job_id, ex.id, f"{PREAPPROVED_BID}; seen after a restart)")
                elif ex.state == S.BID_ACCEPTED and ex.id not in self._preapproved:
                    async with self._lock(job_id):
                        await self._set(ex.id, (S.BID_ACCEPTED,), S.RUNNING, "running (seen after a restart)")
            elif _ran(status):
                if ex.state in (S.ASKED_FOR_BID, S.NEW):
                    async with self._lock(job_id):
                        await self._take_bid(job_id, ex.id, "bid accepted (seen after a restart)")
                if ex.state != S.PUBLISHING:
                    await self._on_run_complete(ex.node_id, m.RunComplete(**info, result=status.result))
                if status.state == S.COMPLETED:
                    await self._published_per_status(info, status.result_ref)
            elif status.state.terminal:
                new = S.CANCELLED if status.state == S.CANCELLED else S.FAILED
                await self._execution_failed(job_id, ex.id, None, new, status.reason or status.state.value)
        except StateError:
            pass  # a callback got there first
        self._notify(job_id)

    async def _expire_nodes_loop(self) -> None:
        # Nodes not heard of for a TTL, and how many passes each has been missing while other nodes were heard.
        # One is written off at its second such pass (TTL/2 later), not at once: when every other node goes
        # silent (two or more, their expiries spread over a pass or two), far likelier this requester is the
        # one cut off than all of them dead. Their executions go on without it; written off, they would run
        # twice once it is back. So while it hears no other node (up to CUT_OFF_PASSES), none is written off;
        # those that come back are caught up with by the reconcile pass, the others written off once other
        # nodes are heard again.
        missing: dict[str, int] = {}
        cut_off = 0         # passes in a row with every other node missing
        while True:
            await trio.sleep(self.nodes.ttl / 2)
            for nid in self.nodes.expire():
                missing[nid] = 0
            for nid in [nid for nid in missing if self.nodes.get(nid) is not None]:
                del missing[nid]          # heard again
            if not missing:
                continue
            if len(missing) >= 2 and not self.nodes.others():
                cut_off += 1
                if cut_off == 1:
                    log.warning("every compute node is lost (%s): this requester looks cut off; their executions "
                                "are kept until a node is heard again", ", ".join(sorted(missing)))
                if cut_off < CUT_OFF_PASSES:
                    continue
                missing = dict.fromkeys(missing, 1)    # that long: taken as dead after all (the work fails)
            else:
                cut_off = 0
            for nid in missing:
                missing[nid] += 1
            gone = {nid for nid, passes in missing.items() if passes >= 2}
            for nid in gone:
                del missing[nid]
            if not gone:
                continue
            log.warning("nodes lost: %s", ", ".join(sorted(gone)))
            for ex in await self.store.live_executions_on(gone):
                await self._execution_failed(ex.job_id, ex.id, (ex.state,), S.FAILED, "the node was lost")
                self._spawn(self._cancel_when_back, ex.node_id, ex.id)

    async def _reconcile_loop(self) -> None:
        """A callback lost on the way (a call that timed out under load, a stream reset) would leave its job
        running for good: executions unchanged for a while have their node asked how they go, and the requester
        catches up with what it missed. A node that does not answer is left to the node table's expiry."""
        while True:
            await trio.sleep(self._reconcile_interval)
            # one query, not a read of every job in progress (a thousand nodes keep thousands running)
            for ex in await self.store.stalled_executions(list(STALLED), time.time() - self._reconcile_interval):
                if ex.id not in self._checking and self.nodes.get(ex.node_id) is not None:
                    self._checking.add(ex.id)
                    self._spawn(self._check_execution, ex.job_id, ex)

    async def _check_execution(self, job_id: str, ex: Execution) -> None:
        """Catch up with an execution its node has taken further than the requester heard."""
        try:
            try:
                status = await self._compute.execution_status(ex.node_id, ex.id)
            except BacalhauError as exc:
                log.info("execution %s: its node %s did not say how it goes: %s", ex.id, ex.node_id, exc)
                return
            info = dict(execution_id=ex.id, job_id=job_id, node_id=ex.node_id)
            if ex.state in (S.BID_ACCEPTED, S.RUNNING) and _ran(status):
                log.warning("execution %s ran on %s but its run-complete never arrived: catching up", ex.id,
                            ex.node_id)
                await self._on_run_complete(ex.node_id, m.RunComplete(**info, result=status.result))
                ex = await self.store.get_execution(ex.id)
            if status.state == S.RUNNING and status.result is not None and ex.state == S.PUBLISHING:
                # the result-accepted was lost on the way (seen in the simulation under loss): say it again
                log.warning("execution %s: its node %s never heard the result was accepted: telling it again",
                            ex.id, ex.node_id)
                await self._tell_compute("result_accepted", ex.node_id, ex.id)
            elif status.state == S.COMPLETED and ex.state == S.PUBLISHING:
                log.warning("execution %s was published on %s but its publish-complete never arrived: catching up",
                            ex.id, ex.node_id)
                await self._published_per_status(info, status.result_ref)
            elif status.state in (S.FAILED, S.CANCELLED) and not ex.state.terminal:
                await self._execution_failed(job_id, ex.id, (ex.state,), status.state,
                                             status.reason or status.state.value)
        except StateError:
            pass    # the callback came meanwhile
        finally:
            self._checking.discard(ex.id)
        self._notify(job_id)

    async def _published_per_status(self, info: dict[str, str], result_ref: str) -> None:
        """An execution its node says is published (a reconcile pass), taken as its publish-complete. A reference
        that is not ipfs://<CID> fails the execution and the job goes on to its retry, as a bad publish-complete
        does (building the message raised on every pass: the job stayed in progress for good)."""
        try:
            msg = m.PublishComplete(**info, result_ref=result_ref)
        except ValueError:
            await self._execution_failed(info["job_id"], info["execution_id"], (S.PUBLISHING,), S.FAILED,
                                         f"node {info['node_id']} reported a bad result reference: "
                                         f"{result_ref[:80]!r} is not ipfs://<CID>")
            return
        await self._on_publish_complete(msg.node_id, msg)

    async def _cancel_when_back(self, node_id: str, execution_id: str) -> None:
        """A node cut off (not dead) comes back still holding what was written off and run elsewhere: its
        result would be refused, so tell it to stop instead of keeping the job's room taken (or running)."""
        with trio.move_on_after(LOST_EXECUTION_CANCEL_WINDOW):
            await self.nodes.wait_for(node_id)
            # only if written off: one that moved on first (say to publishing) is still the job's
            if (await self.store.get_execution(execution_id)).state == S.FAILED:
                await self._tell_compute("cancel", node_id, execution_id, "the requester lost this node meanwhile")

    # -- helpers --------------------------------------------------------------------------------------------

    async def _set(self, execution_id: str, expected: tuple[ExecutionState, ...] | None, new: ExecutionState,
                   reason: str, **kw: object) -> Execution:
        if new in (S.FAILED, S.CANCELLED) and execution_id in self._replied and "first" not in kw:
            kw.update(await self._settled_steps(execution_id))
        ex = await self.store.update_execution(execution_id, expected, new, reason, **kw)  # type: ignore[arg-type]
        if new != S.ASKED_FOR_BID:       # answered, or gone another way: its bid is no longer waited for
            deadline = self._awaiting_bid.pop(execution_id, None)
            if deadline is not None:
                deadline.cancel()
            self.nodes.answered(ex.node_id, execution_id)
            self._replied.pop(execution_id, None)     # its settle is over: no bid of it waits to be written
        if new.terminal:                 # a refused or unneeded bid too: no longer load on the node
            self.nodes.ended(ex.node_id, execution_id)
            self._preapproved.discard(execution_id)
        return ex

    async def _settled_steps(self, execution_id: str) -> dict[str, object]:
        """(The job's lock held.) An execution whose pre-approved yes came, its bid waiting to be written with
        the run's end (_settle), fails or is cancelled first: the node took it and ran it, so its bid taken and
        its run (the job's start too) go in the same write, at the yes's time. Without them the history said
        asked_for_bid, failed: never run, the job never in progress."""
        ex = await self.store.get_execution(execution_id)
        at = self._replied.get(execution_id)
        if ex.state != S.ASKED_FOR_BID or at is None:
            return {}
        return _bid_steps(await self.store.get_job(ex.job_id, full=False), at)

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()
        for hook in self.on_change:
            hook(job_id)

    def _spawn(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> None:
        assert self._nursery is not None, "Requester.run() is not running"
        self._nursery.start_soon(_guarded, fn, args, name=getattr(fn, "__qualname__", fn))


def _bid_steps(job: Job, at: float) -> dict[str, Any]:
    """update_execution's steps before an outcome of a pre-approved execution whose bid was not yet written:
    its bid taken and its run started at `at` (the node's yes), its job in progress then if it was pending."""
    return {"first": [(S.BID_ACCEPTED, f"{PREAPPROVED_BID})", at), (S.RUNNING, PREAPPROVED_RUNNING, at)],
            "job_first": [(JobState.PENDING, JobState.IN_PROGRESS, "bid accepted", at)]
            if job.state == JobState.PENDING else []}


def _ran(status: m.ExecutionStatus) -> bool:
    """The node ran the execution to a result: what its run-complete (lost, or missed while down) would say.
    One failed with the run's own error (its timeout) too: the job fails, not retried, as the callback has it."""
    if status.result is None:
        return False
    return status.state in (S.RUNNING, S.PUBLISHING, S.COMPLETED) or (
        status.state == S.FAILED and bool(status.result.error))


async def _guarded(fn: Callable[[*Ts], Awaitable[object]], args: tuple[*Ts]) -> None:
    """The boundary of every task the requester spawns: what escapes one (exception groups included; never
    trio.Cancelled) is logged once and the requester goes on (its timeouts and reconciliation take it up)."""
    try:
        await fn(*args)
    except* Exception as group:
        log.exception("%s%r failed", getattr(fn, "__name__", fn), args, exc_info=group)

