"""A cluster simulated in one process: one real Requester (its class, its SQLite store, its node table) against
many light compute nodes that answer the bprotocol as a compute node does, over the in-memory transport with
per-message latency and loss, and nodes that crash and come back.

A simulated node keeps its executions in a dict (its "disk", kept across a crash), runs each for `run_time`
within `slots` at once (more wait in a queue, as the real node's capacity queue does), and gossips a NodeInfo
every `gossip_interval`. It reads requests as JSON without the pydantic models (it stands for a node on
another machine: its CPU is not the requester's), while the requester decodes everything it receives as it
would from a real node.

What the simulation checks (`Sim.check`): every job ends, and no job ever ran on more nodes at once than its
concurrency. What it measures (`Sim.report`): jobs/s, submit-to-end latency, the bid round (the first ask
of a job reaching a node to the bid's acceptance reaching it) and gossip per node.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import error_reply, ok_reply
from bacalhau.bprotocol.proxies import CallbackProxy
from bacalhau.bprotocol.transport import InMemoryNetwork, InMemoryTransport
from bacalhau.compute.callbacks import DEFAULT_CALLBACK_RETRY, CallbackRetry, deliver
from bacalhau.config import DEFAULT_JOB_CPU, DEFAULT_JOB_MEMORY
from bacalhau.errors import BacalhauError, NotFoundError, StateError, TransportError
from bacalhau.ipfs.unixfs import cid_str, make_cid
from bacalhau.models import Engine, ExecutionState, Job, JobSpec, NodeInfo, NodeType, Resources, RunResult
from bacalhau.requester.nodes import NodeTable
from bacalhau.requester.service import Requester
from bacalhau.requester.store import JobStore

log = logging.getLogger(__name__)
S = ExecutionState
RESULT_REF = "ipfs://" + cid_str(make_cid(b"simulated result", 0x55, 1))
_ACK = ok_reply(m.Ack())


@dataclass
class SimConfig:
    nodes: int = 10
    slots: int = 4                 # executions a node runs at once
    run_time: float = 0.05         # seconds an execution runs
    publish_time: float = 0.0
    latency: float = 0.0           # one way, per message
    jitter: float = 0.0
    loss: float = 0.0              # probability each request and each reply is lost
    gossip_interval: float = 1.0
    node_ttl: float = 5.0
    call_timeout: float = 2.0
    bid_timeout: float = 2.0
    reconcile_interval: float = 30.0
    max_attempts: int = 3
    callback_retry: CallbackRetry = DEFAULT_CALLBACK_RETRY   # attempts=1: the nodes of before, which sent once
    seed: int | None = None


@dataclass
class _Ex:
    job_id: str
    requester_id: str
    spec: dict[str, Any]
    state: ExecutionState
    reason: str = ""
    result: RunResult | None = None
    result_ref: str = ""
    scope: trio.CancelScope | None = None


@dataclass
class Stats:
    """What the simulated nodes saw, cluster-wide."""

    first_ask: dict[str, float] = field(default_factory=dict)      # job id -> when its first ask was sent
    bid_round: list[float] = field(default_factory=list)           # seconds, one per job's first acceptance
    accepted_at: list[float] = field(default_factory=list)         # when each of those acceptances came
    running: Counter[str] = field(default_factory=Counter)         # job id -> executions running right now
    most_at_once: dict[str, int] = field(default_factory=dict)     # job id -> the most that ever ran at once
    runs: Counter[str] = field(default_factory=Counter)            # job id -> executions started
    gossip_messages: int = 0
    gossip_cpu: float = 0.0       # seconds of CPU the requester spent taking NodeInfo messages in
    gossip_bytes: int = 0


class SimComputeNode:
    def __init__(self, node_id: str, sim: Sim) -> None:
        self.node_id = node_id
        self._sim = sim
        self._cfg = sim.config
        self.transport: InMemoryTransport = sim.network.transport(node_id)
        self._callbacks = CallbackProxy(self.transport, self._cfg.call_timeout)
        self.executions: dict[str, _Ex] = {}       # kept across a crash: the node's store
        self.up = True
        self._running = 0
        self._queue: list[str] = []
        self._slot_free = trio.Event()
        self._life: trio.CancelScope | None = None
        self.next_gossip = 0.0
        self.decides_retries = True     # False: a node of before, which reports a nonzero exit as run-complete
        self._gossip_cache: dict[tuple[int, int], bytes] = {}
        self._nursery: trio.Nursery | None = None
        handlers: dict[str, Callable[[str, dict[str, Any]], Awaitable[bytes]]] = {
            m.ASK_FOR_BID: self._ask_for_bid, m.BID_ACCEPTED: self._bid_accepted, m.BID_REJECTED: self._bid_rejected,
            m.RESULT_ACCEPTED: self._result_accepted, m.RESULT_REJECTED: self._result_rejected,
            m.CANCEL: self._cancel, m.EXECUTION_STATUS: self._execution_status,
        }
        for proto, fn in handlers.items():
            self.transport.register(proto, self._boundary(fn))

    def _boundary(self, fn: Callable[[str, dict[str, Any]], Awaitable[bytes]]) -> Callable[[str, bytes], Awaitable[bytes]]:
        async def handle(peer_id: str, payload: bytes) -> bytes:
            try:
                if not self.up:     # a call already on its way when the node crashed
                    raise TransportError(f"node {self.node_id} is down")
                return await fn(peer_id, json.loads(payload))
            except BacalhauError as exc:
                return error_reply(exc)
        return handle

    def _owned(self, peer_id: str, req: dict[str, Any]) -> tuple[str, _Ex]:
        ex = self.executions.get(req["execution_id"])
        if ex is None:
            raise NotFoundError(f"no execution {req['execution_id']} on this node")
        if ex.requester_id != peer_id:
            raise StateError(f"{peer_id} is not the requester of {req['execution_id']}")
        return req["execution_id"], ex

    def _move(self, ex: _Ex, expected: tuple[ExecutionState, ...] | None, new: ExecutionState,
              reason: str = "") -> None:
        if expected is not None and ex.state not in expected:
            raise StateError(f"expected {'/'.join(s.value for s in expected)}, found {ex.state.value}")
        ex.state, ex.reason = new, reason

    # -- lifetime -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One life of the node: ends at crash() (its tasks die with it) or when the simulation ends."""
        with trio.CancelScope() as self._life:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # a restarted node fails what it held unfinished and says so, as the real one does
                for ex_id, ex in self.executions.items():
                    if not ex.state.terminal and ex.state != S.NEW and ex.state != S.BID_REJECTED:
                        self._move(ex, None, S.FAILED, "compute node restarted while it held the execution")
                        nursery.start_soon(self._send_failure, ex_id, ex)
                self.next_gossip = trio.current_time() + self._sim.rng.random() * self._cfg.gossip_interval
                task_status.started()
                await trio.sleep_forever()

    def crash(self) -> None:
        """The process dies: calls to it fail, its runs stop, its gossip ends; its store stays on disk."""
        self.up = False
        self._sim.network.take_down(self.node_id)
        for ex in self.executions.values():
            if ex.scope is not None:
                ex.scope.cancel()
                ex.scope = None
        self._running, self._queue, self._slot_free = 0, [], trio.Event()
        if self._life is not None:
            self._life.cancel()

    async def restart(self) -> None:
        self.up = True
        self._sim.network.bring_back(self.node_id)
        await self._sim.nursery.start(self.run)

    def node_info(self) -> NodeInfo:
        cpu, memory = DEFAULT_JOB_CPU, DEFAULT_JOB_MEMORY
        free = max(0, self._cfg.slots - self._running)
        return NodeInfo(
            node_id=self.node_id, node_types=[NodeType.COMPUTE], engines=[Engine.NOOP],
            capacity_total=Resources(cpu=cpu * self._cfg.slots, memory=memory * self._cfg.slots),
            capacity_free=Resources(cpu=cpu * free, memory=memory * free), running=self._running,
            queued=len(self._queue), version="sim",
        )

    def gossip(self) -> None:
        """Publish this node's NodeInfo (the simulation's one ticker calls it every gossip_interval). The
        bytes are made once per (running, queued), with the time patched in: the simulated nodes' own CPU
        is not what is measured."""
        key = (self._running, len(self._queue))
        template = self._gossip_cache.get(key)
        if template is None:
            info = self.node_info()
            info.published_at = 1.5
            template = self._gossip_cache[key] = info.model_dump_json().encode()
        data = template.replace(b'"published_at":1.5', b'"published_at":%r' % time.time())
        self._sim.stats.gossip_messages += 1
        self._sim.stats.gossip_bytes += len(data)
        self._sim.network.publish(self.node_id, data)
        self.next_gossip += self._cfg.gossip_interval

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # -- handlers -------------------------------------------------------------------------------------------

    async def _ask_for_bid(self, peer_id: str, req: dict[str, Any]) -> bytes:
        ex_id, job = req["execution_id"], req["job"]
        if ex_id in self.executions:
            raise StateError(f"execution {ex_id} exists already on this node")
        now = trio.current_time() - self._cfg.latency
        self._sim.stats.first_ask.setdefault(job["id"], now)
        self.executions[ex_id] = _Ex(job["id"], req["requester_id"], job["spec"], S.NEW, "bid")
        self._spawn(self._send, self._callbacks.on_bid_complete, req["requester_id"], m.BidResult(
            execution_id=ex_id, job_id=job["id"], node_id=self.node_id, accepted=True))
        return _ACK

    async def _bid_accepted(self, peer_id: str, req: dict[str, Any]) -> bytes:
        ex_id, ex = self._owned(peer_id, req)
        self._move(ex, (S.NEW,), S.BID_ACCEPTED, "bid accepted")
        stats = self._sim.stats
        if ex.job_id in stats.first_ask and ex.job_id not in self._sim.accepted:
            self._sim.accepted.add(ex.job_id)
            stats.bid_round.append(trio.current_time() - stats.first_ask[ex.job_id])
            stats.accepted_at.append(trio.current_time())
            if len(stats.accepted_at) >= self._sim.scheduled_target:
                self._sim.all_scheduled.set()
        ex.scope = trio.CancelScope()
        self._spawn(self._execute, ex_id, ex, ex.scope)
        return _ACK

    async def _bid_rejected(self, peer_id: str, req: dict[str, Any]) -> bytes:
        _, ex = self._owned(peer_id, req)
        self._move(ex, (S.NEW,), S.BID_REJECTED, req.get("reason", ""))
        return _ACK

    async def _result_accepted(self, peer_id: str, req: dict[str, Any]) -> bytes:
        ex_id, ex = self._owned(peer_id, req)
        self._move(ex, (S.RUNNING,), S.PUBLISHING, "result accepted")
        self._spawn(self._publish, ex_id, ex)
        return _ACK

    async def _result_rejected(self, peer_id: str, req: dict[str, Any]) -> bytes:
        _, ex = self._owned(peer_id, req)
        self._move(ex, (S.RUNNING,), S.FAILED, req.get("reason", ""))
        return _ACK

    async def _cancel(self, peer_id: str, req: dict[str, Any]) -> bytes:
        ex_id, ex = self._owned(peer_id, req)
        if not ex.state.terminal:
            if ex.scope is not None:
                ex.scope.cancel()
            self._move(ex, None, S.CANCELLED, req.get("reason", "cancelled"))
        return _ACK

    async def _execution_status(self, peer_id: str, req: dict[str, Any]) -> bytes:
        ex_id, ex = self._owned(peer_id, req)
        return ok_reply(m.ExecutionStatus(execution_id=ex_id, state=ex.state, reason=ex.reason, result=ex.result,
                                          result_ref=ex.result_ref))

    # -- work -----------------------------------------------------------------------------------------------

    async def _execute(self, ex_id: str, ex: _Ex, scope: trio.CancelScope) -> None:
        stats = self._sim.stats
        with scope:
            while self._running >= self._cfg.slots:      # queued, as the real node's capacity queue does
                self._queue.append(ex_id)
                await self._slot_free.wait()
                self._queue.remove(ex_id)
            self._running += 1
            try:
                self._move(ex, (S.BID_ACCEPTED,), S.RUNNING, "started")
                stats.runs[ex.job_id] += 1
                stats.running[ex.job_id] += 1
                stats.most_at_once[ex.job_id] = max(stats.most_at_once.get(ex.job_id, 0), stats.running[ex.job_id])
                try:
                    await trio.sleep(self._cfg.run_time)
                finally:
                    stats.running[ex.job_id] -= 1
            finally:
                self._running -= 1
                self._slot_free.set()
                self._slot_free = trio.Event()
        ex.scope = None
        if scope.cancelled_caught or ex.state != S.RUNNING:
            return
        noop = ex.spec.get("noop") or {}
        ex.result = RunResult(exit_code=noop.get("exit_code", 0))
        if ex.result.exit_code and self.decides_retries and (ex.spec.get("retry") or {}).get("on_nonzero_exit"):
            self._move(ex, None, S.FAILED, f"exited with code {ex.result.exit_code}; the job asks to be retried")
            await self._send_failure(ex_id, ex)
            return
        await self._send(self._callbacks.on_run_complete, ex.requester_id, m.RunComplete(
            execution_id=ex_id, job_id=ex.job_id, node_id=self.node_id, result=ex.result))

    async def _publish(self, ex_id: str, ex: _Ex) -> None:
        if self._cfg.publish_time:
            await trio.sleep(self._cfg.publish_time)
        if ex.state != S.PUBLISHING:
            return
        self._move(ex, None, S.COMPLETED, "published")
        ex.result_ref = RESULT_REF
        await self._send(self._callbacks.on_publish_complete, ex.requester_id, m.PublishComplete(
            execution_id=ex_id, job_id=ex.job_id, node_id=self.node_id, result_ref=RESULT_REF))

    async def _send_failure(self, ex_id: str, ex: _Ex) -> None:
        await self._send(self._callbacks.on_compute_failure, ex.requester_id, m.ComputeFailure(
            execution_id=ex_id, job_id=ex.job_id, node_id=self.node_id, reason=ex.reason))

    async def _send(self, call: Callable[[str, Any], Awaitable[None]], requester_id: str, msg: object) -> None:
        """Sent again while unanswered, by the real node's code (compute/callbacks.py); once given up on, the
        requester's reconcile pass catches up."""
        await deliver(call, requester_id, msg, policy=self._cfg.callback_retry, rng=self._sim.rng)


class Sim:
    """Use as `async with Sim(config, tmp_dir) as sim:`; the requester and all nodes run until it exits."""

    def __init__(self, config: SimConfig, db_dir: Path) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.network = InMemoryNetwork(latency=config.latency, jitter=config.jitter, loss=config.loss,
                                       rng=random.Random(self.rng.random()))
        self.stats = Stats()
        self.accepted: set[str] = set()
        self.scheduled_target = 0              # all_scheduled is set once that many jobs had a bid accepted
        self.all_scheduled = trio.Event()
        self._db_dir = db_dir
        self.requester_id = "mem-" + "f" * 12
        self.nodes = [SimComputeNode(f"mem-{i:012x}", self) for i in range(config.nodes)]
        self.requester: Requester
        self.nursery: trio.Nursery
        self._started = 0.0

    async def __aenter__(self) -> Sim:
        self._nursery_cm = trio.open_nursery()
        self.nursery = await self._nursery_cm.__aenter__()
        self.store = JobStore(self._db_dir / "jobs.db")
        cfg = self.config
        self.requester = Requester(
            node_id=self.requester_id, transport=self.network.transport(self.requester_id), store=self.store,
            nodes=NodeTable(cfg.node_ttl), call_timeout=cfg.call_timeout, bid_timeout=cfg.bid_timeout,
            max_attempts=cfg.max_attempts, reconcile_interval=cfg.reconcile_interval)
        self.network.subscribers.append(self._receive_node_info)
        await self.nursery.start(self.requester.run)
        for node in self.nodes:
            await self.nursery.start(node.run)
        self.nursery.start_soon(self._gossip)
        with trio.fail_after(cfg.gossip_interval * 3 + 5):
            for node in self.nodes:
                await self.requester.nodes.wait_for(node.node_id)
        self.stats.gossip_messages = self.stats.gossip_bytes = 0     # counted from here: all nodes are known
        self.stats.gossip_cpu = 0.0
        self._started = trio.current_time()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.nursery.cancel_scope.cancel()
        await self._nursery_cm.__aexit__(None, None, None)
        self.store.close()

    async def _gossip(self) -> None:
        """Every node's NodeInfo at its own phase, from one task (a thousand sleeping tasks cost the process
        more than the requester's whole handling of their messages)."""
        tick = min(0.02, self.config.gossip_interval / 4)
        while True:
            now = trio.current_time()
            for node in self.nodes:
                if node.up and node.next_gossip <= now:
                    node.gossip()
            await trio.sleep(tick)

    def _receive_node_info(self, sender: str, data: bytes) -> None:
        """What Node._receive_node_info does for a requester: parse, check the sender, update the table."""
        if self.requester_id in self.network.cut:
            return
        t0 = time.thread_time()
        info = NodeInfo.model_validate_json(data)
        if info.node_id == sender and self.requester.nodes.update(info):
            self.requester.node_joined(info)
        self.stats.gossip_cpu += time.thread_time() - t0

    def node(self, node_id: str) -> SimComputeNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def submit(self, spec: JobSpec | None = None) -> Job:
        return await self.requester.submit(spec or JobSpec(engine=Engine.NOOP))

    async def wait_all(self, job_ids: list[str], timeout: float) -> dict[str, Job]:
        """Every job in a terminal state (polled: jobs end on callbacks, retries and timeouts alike)."""
        done: dict[str, Job] = {}
        with trio.move_on_after(timeout):
            while len(done) < len(job_ids):
                for job_id in job_ids:
                    if job_id not in done:
                        job = await self.store.get_job(job_id, full=False)
                        if job.state.terminal:
                            done[job_id] = job
                if len(done) < len(job_ids):
                    await trio.sleep(0.05)
        return done

    def gossip_per_node_per_second(self) -> tuple[float, float]:
        elapsed = max(1e-9, trio.current_time() - self._started)
        n = max(1, len(self.nodes))
        return self.stats.gossip_messages / n / elapsed, self.stats.gossip_bytes / n / elapsed


    def check(self, jobs: dict[str, Job], job_ids: list[str]) -> list[str]:
        """What went wrong, in words (empty when nothing did): a job that never ended, one that ended failed
        without a reason, one that ran on more nodes at once than its concurrency."""
        problems = [f"job {j} never ended" for j in job_ids if j not in jobs]
        for job in jobs.values():
            if job.state.value == "failed" and not job.reason:
                problems.append(f"job {job.id} failed without a reason")
            most = self.stats.most_at_once.get(job.id, 0)
            if most > job.spec.concurrency:
                problems.append(f"job {job.id} ran {most} times at once (concurrency {job.spec.concurrency})")
        return problems


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


