"""The compute node: bids for jobs, runs accepted executions within its capacity, keeps their results and
reports every outcome to the requester through callbacks."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVarTuple

import trio
from pydantic import BaseModel

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.ids import parse_execution_id
from bacalhau.bprotocol.proxies import CallbackProxy
from bacalhau.bprotocol.transport import AnyModelHandler, Transport, typed_handler
from bacalhau.compute import failures
from bacalhau.compute.bidding import BidContext, bid, lacks_inputs
from bacalhau.compute.callbacks import DEFAULT_CALLBACK_RETRY, CallbackRetry, deliver
from bacalhau.compute.capacity import Capacity
from bacalhau.compute.held import HeldOutputs
from bacalhau.compute.logs import LOG_PROTOCOL, LogEnd, LogRequest, stream_known_logs, stream_logs
from bacalhau.compute.publishing import GroupedPublisher
from bacalhau.compute.results import read_result, read_tree, remove_tree
from bacalhau.compute.store import ExecutionStore, LocalExecution
from bacalhau.config import DEFAULT_MAX_RESULT_SIZE, JobLimits
from bacalhau.errors import BacalhauError, ExecutorError, NotFoundError, ProtocolError, StateError
from bacalhau.executors.types import ExecutionDir, Executor
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.publish import ResultTooLarge, scan_result, skipped_note, tree_size
from bacalhau.models import Engine, ExecutionState, Job, NodeInfo, NodeType, Resources, RunResult
from bacalhau.storage.inputs import DEFAULT_PROVIDERS, prepare_inputs
from bacalhau.storage.ipfs import IpfsStorage
from bacalhau.storage.types import StorageProvider

log = logging.getLogger(__name__)
S = ExecutionState
STARTED = "started"            # an execution's reason once it runs
Ts = TypeVarTuple("Ts")
REMOTE_INPUT_BID_DELAY = 0.3   # seconds a node that must fetch a job's ipfs:// inputs waits before bidding
MAX_CANCELLED_AHEAD = 4096     # cancels kept that came before their (pre-approved) ask; the oldest go first


class ComputeNode:
    def __init__(
        self, *, node_id: str, transport: Transport, executors: dict[Engine, Executor], store: ExecutionStore,
        results_dir: Path, capacity: Resources, labels: dict[str, str], call_timeout: float, version: str = "",
        blockstore: Blockstore, fetch: Callable[[bytes], Awaitable[None]] | None = None,
        on_published: Callable[[bytes], Awaitable[None]] | None = None, limits: JobLimits | None = None,
        max_result_size: int = DEFAULT_MAX_RESULT_SIZE,
        providers: list[StorageProvider] = DEFAULT_PROVIDERS, callback_retry: CallbackRetry = DEFAULT_CALLBACK_RETRY,
    ) -> None:
        self.limits = limits or JobLimits()   # shared with the executors: what a job counts as is what it gets
        self._max_result_size = max_result_size
        self._blockstore = blockstore
        self._publisher = GroupedPublisher(blockstore, max_result_size)
        self._on_published = on_published    # e.g. a push to the external IPFS node of --ipfs-connect
        self._storage: list[StorageProvider] = [*providers, IpfsStorage(blockstore, fetch)]
        self.node_id = node_id
        self._transport = transport
        self._executors = executors
        self._store = store
        self._results_dir = results_dir
        self._results_base: Path | None = None     # results_dir resolved, once (resolving it was ~10% of the
                                                    # event loop's time on a noop job)
        self.capacity = Capacity(capacity, self.limits)
        self.labels = labels
        self.version = version
        self._callbacks = CallbackProxy(transport, call_timeout)
        self._callback_retry = callback_retry
        self.engines: frozenset[Engine] = frozenset()
        self.log_stream_addr = ""      # set by the node once its libp2p host listens
        self.log_followers = 0         # log streams open right now (each ends when its client goes)
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._orphans: list[LocalExecution] = []
        self._accepting = True
        self._idle = trio.Event()      # set whenever an execution leaves _busy, for drain()
        self._busy: set[str] = set()   # accepted and not yet published, failed or cancelled
        self._held = HeldOutputs(store)   # the outputs in memory (a noop's) of those of _busy that have one
        self._cancelled_ahead: dict[tuple[str, str], str] = {}   # (requester, execution id) -> the cancel's reason
        self._taking = Resources()    # capacity taken by pre-approved asks being written down, not yet started
        requests: list[tuple[str, type[BaseModel], AnyModelHandler]] = [
            (m.ASK_FOR_BID, m.AskForBidRequest, self._ask_for_bid),
            (m.ASK_FOR_BID_APPROVED, m.AskForBidRequest, self._ask_for_bid_approved),
            (m.BID_ACCEPTED, m.ExecutionRequest, self._bid_accepted),
            (m.BID_REJECTED, m.ExecutionReasonRequest, self._bid_rejected),
            (m.RESULT_ACCEPTED, m.ExecutionRequest, self._result_accepted),
            (m.RESULT_REJECTED, m.ExecutionReasonRequest, self._result_rejected),
            (m.CANCEL, m.ExecutionReasonRequest, self._cancel),
            (m.EXECUTION_STATUS, m.ExecutionRequest, self._execution_status),
        ]
        for proto, model, fn in requests:
            transport.register(proto, typed_handler(model, self._from_its_requester(fn)))
        transport.register_stream(m.GET_RESULT, self._get_result)
        transport.register_stream(LOG_PROTOCOL, self._logs)

    def _from_its_requester(self, fn: AnyModelHandler) -> AnyModelHandler:
        """Only the requester that asked for an execution may steer it (any cluster member can call)."""
        async def checked(peer_id: str, req: Any) -> BaseModel:
            if isinstance(req, m.AskForBidRequest):
                if req.requester_id != peer_id:
                    raise ProtocolError(f"{peer_id} asks for a bid on behalf of {req.requester_id}")
            else:
                try:
                    await self._owned_by(peer_id, req.execution_id)
                except NotFoundError:
                    if fn != self._cancel:
                        raise
                    return await self._cancel_ahead(peer_id, req)
            return await fn(peer_id, req)

        return checked

    async def _owned_by(self, peer_id: str, execution_id: str) -> None:
        """ProtocolError unless `peer_id` is the requester that created the execution (NotFoundError if there
        is no such execution)."""
        if await self._store.requester_of(execution_id) != peer_id:
            raise ProtocolError(f"{peer_id} is not the requester of execution {execution_id}")

    # -- lifetime -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ComputeNode] = trio.TASK_STATUS_IGNORED) -> None:
        installed = set()
        for engine, executor in self._executors.items():
            if await executor.is_installed():
                installed.add(engine)
            else:
                log.warning("engine %s is not available on this node; it will not be advertised", engine.value)
        self.engines = frozenset(installed)
        for executor in self._executors.values():
            cleanup = getattr(executor, "cleanup_orphans", None)
            if cleanup is not None and executor.engine in self.engines:
                removed = await cleanup()
                if removed:
                    log.info("removed %d orphan containers of an earlier run", removed)
        self._orphans = await trio.to_thread.run_sync(self._store.fail_unfinished_sync, "compute node restarted")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def report_orphans(self) -> None:
        """Tell requesters about executions an earlier run of this node left unfinished (called once the
        node's own requester, if any, is up)."""
        for ex in self._orphans:
            self._spawn(self._notify_failure, ex, "compute node restarted while it held the execution")
        self._orphans = []

    async def drain(self, grace: float) -> None:
        """Stop taking work; give running executions `grace` seconds to end."""
        self._accepting = False
        with trio.move_on_after(grace):
            while self._busy:
                self._idle = trio.Event()
                await self._idle.wait()

    def node_info(self, addrs: list[str], node_types: list[NodeType]) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id, node_types=node_types, addrs=addrs, engines=sorted(self.engines),
            labels=self.labels, capacity_total=self.capacity.total, capacity_free=self.capacity.free + self._taking,
            running=len(self._scopes), queued=self.capacity.queued, version=self.version,
            published_at=time.time(), log_stream_addr=self.log_stream_addr,
        )

    def _spawn(self, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts, execution: LocalExecution | None = None) -> None:
        """Run `fn(*args)` as a task of the node behind a boundary: whatever escapes it (exception groups
        included; never trio.Cancelled) is logged once and fails `execution`, if given; the node goes on."""
        assert self._nursery is not None, "ComputeNode.run() is not running"
        self._nursery.start_soon(self._guarded, fn, args, execution, name=getattr(fn, "__qualname__", fn))

    async def _guarded(self, fn: Callable[[*Ts], Awaitable[object]], args: tuple[*Ts], execution: LocalExecution | None) -> None:
        failure: BaseException | None = None
        try:
            await fn(*args)
        except* Exception as group:   # Exception only: trio.Cancelled and KeyboardInterrupt go on up
            failure = group
            what = f"execution {execution.id} of job {execution.job.id}" if execution else getattr(fn, "__name__", fn)
            if failures.expected(group):
                log.warning("%s failed: %s", what, failures.reason_for(group))
            else:
                log.exception("%s failed on an unexpected error", what, exc_info=group)
        if failure is not None and execution is not None:
            await self._fail_safely(execution, failures.reason_for(failure), failure)

    # -- handlers (requester -> compute) --------------------------------------------------------------------

    def _bid_on(self, job: Job) -> tuple[BidContext, str | None]:
        """What this node knows to bid with, and why it refuses the job (None: it bids yes). Both asks."""
        ctx = BidContext(self.engines, self.capacity.total, self.labels, self._blockstore, self.limits)
        return ctx, "the node is shutting down" if not self._accepting else bid(job, ctx)

    async def _ask_for_bid(self, peer_id: str, req: m.AskForBidRequest) -> m.Ack:
        ctx, reason = self._bid_on(req.job)
        state = S.NEW if reason is None else S.BID_REJECTED
        # an id is created once, by one requester: asking again (anyone) takes nothing over (StateError)
        await self._store.create(
            LocalExecution(id=req.execution_id, job=req.job, requester_id=req.requester_id, state=state,
                           reason=reason or "bid")
        )
        msg = m.BidResult(execution_id=req.execution_id, job_id=req.job.id, node_id=self.node_id,
                          accepted=reason is None, reason=reason or "", log_stream_addr=self.log_stream_addr)
        # a node that holds the job's ipfs:// inputs bids first: the others answer a moment later
        delay = REMOTE_INPUT_BID_DELAY if reason is None and lacks_inputs(req.job, ctx) else 0.0
        self._spawn(self._send, "on_bid_complete", req.requester_id, msg, delay)
        return m.Ack()

    async def _ask_for_bid_approved(self, peer_id: str, req: m.AskForBidRequest) -> m.BidResult:
        """A pre-approved ask (messages.py): the bid is the reply, a yes is accepted as it is written down (one
        write, before the reply: what the requester is told is on disk) and starts at once."""
        _, reason = self._bid_on(req.job)
        ex = LocalExecution(id=req.execution_id, job=req.job, requester_id=req.requester_id,
                            state=S.BID_ACCEPTED if reason is None else S.BID_REJECTED,
                            reason=reason or "bid accepted (pre-approved)")
        # room for it now: taken before the write, which records it accepted and started at once (one durable
        # write in series less before it runs); otherwise it queues in _execute, accepted, as a bid does
        taken = self.capacity.take_now(req.job.spec.resources, req.job.spec.engine) if reason is None else None
        if taken is not None:
            # reported free until it starts (the requester counts it as its own once it has the bid)
            self._taking = self._taking + taken
        try:
            # an id taken already: StateError, nothing started
            await self._store.create(ex, then=(S.RUNNING, STARTED) if taken is not None else None)
        except BaseException:
            if taken is not None:
                self.capacity.give_back(taken)
            raise
        finally:
            if taken is not None:
                self._taking = self._taking - taken
        ahead = self._cancelled_ahead.pop((peer_id, req.execution_id), None)
        if reason is None and ahead is not None:    # the requester gave it up before it was taken (_cancel_ahead)
            reason = f"cancelled before the ask was taken: {ahead}"
            if taken is not None:
                self.capacity.give_back(taken)
            with contextlib.suppress(StateError):      # or a cancel that came meanwhile did it
                await self._store.update(ex.id, (S.BID_ACCEPTED, S.RUNNING), S.CANCELLED, ahead)
        elif reason is None:
            self._start(ex, preapproved=True, taken=taken)
        return m.BidResult(execution_id=req.execution_id, job_id=req.job.id, node_id=self.node_id,
                           accepted=reason is None, reason=reason or "", log_stream_addr=self.log_stream_addr)

    async def _bid_accepted(self, peer_id: str, req: m.ExecutionRequest) -> m.Ack:
        self._start(await self._store.update(req.execution_id, (S.NEW,), S.BID_ACCEPTED, "bid accepted"))
        return m.Ack()

    def _start(self, ex: LocalExecution, *, preapproved: bool = False, taken: Resources | None = None) -> None:
        """`taken`: the capacity it holds already, its RUNNING already written (_ask_for_bid_approved)."""
        scope = trio.CancelScope()
        self._scopes[ex.id] = scope
        self._busy.add(ex.id)
        self._spawn(self._execute, ex, scope, preapproved, taken, execution=ex)

    async def _bid_rejected(self, peer_id: str, req: m.ExecutionReasonRequest) -> m.Ack:
        await self._store.update(req.execution_id, (S.NEW,), S.BID_REJECTED, req.reason or "bid rejected")
        return m.Ack()

    async def _result_accepted(self, peer_id: str, req: m.ExecutionRequest) -> m.Ack:
        ex = await self._store.update(req.execution_id, (S.RUNNING,), S.PUBLISHING, "result accepted")
        self._spawn(self._publish, ex, execution=ex)
        return m.Ack()

    async def _result_rejected(self, peer_id: str, req: m.ExecutionReasonRequest) -> m.Ack:
        await self._store.update(req.execution_id, (S.RUNNING,), S.FAILED, req.reason or "result rejected")
        self._done(req.execution_id)
        return m.Ack()

    async def _cancel(self, peer_id: str, req: m.ExecutionReasonRequest) -> m.Ack:
        ex = await self._store.get(req.execution_id)
        if ex.state.terminal:
            return m.Ack()
        scope = self._scopes.get(ex.id)
        if scope is not None:
            executor = self._executors.get(ex.job.spec.engine)
            if executor is not None:
                await executor.cancel(ex.id)
            scope.cancel()
        ex = await self._store.update(ex.id, None, S.CANCELLED, req.reason or "cancelled")
        self._done(ex.id)
        self._spawn(self._send, "on_cancel_complete", ex.requester_id,
                    m.CancelComplete(execution_id=ex.id, job_id=ex.job.id, node_id=self.node_id))
        return m.Ack()

    async def _cancel_ahead(self, peer_id: str, req: m.ExecutionReasonRequest) -> m.Ack:
        """A cancel that came before its ask (the requester gave the ask up, its call timed out, while the ask
        was still on its way or being taken here): a pre-approved ask starts as it is taken, so the cancel is
        kept for it, and the ask, landing, starts nothing. Still not found, unless the ask was taken while this
        looked (then it is cancelled as any other)."""
        key = (peer_id, req.execution_id)
        self._cancelled_ahead[key] = (req.reason or "cancelled")[:200]     # a peer's text: kept short
        while len(self._cancelled_ahead) > MAX_CANCELLED_AHEAD:
            del self._cancelled_ahead[next(iter(self._cancelled_ahead))]
        await self._owned_by(peer_id, req.execution_id)     # NotFoundError: kept for the ask
        self._cancelled_ahead.pop(key, None)
        return await self._cancel(peer_id, req)

    async def _execution_status(self, peer_id: str, req: m.ExecutionRequest) -> m.ExecutionStatus:
        ex = await self._store.get(req.execution_id)
        return m.ExecutionStatus(execution_id=ex.id, state=ex.state, reason=ex.reason, result=ex.result,
                                 result_ref=ex.result_ref)

    async def _get_result(self, peer_id: str, payload: bytes) -> AsyncIterator[bytes]:
        from bacalhau.bprotocol.framing import decode

        req = decode(payload, m.GetResultRequest)
        await self._owned_by(peer_id, req.execution_id)
        known = await self._held.lookup(req.execution_id)
        if known is not None:
            if not known.ran:
                raise NotFoundError(f"no result for execution {req.execution_id} on this node")
            # encoding up to 1M characters (4 MiB) takes 5-15 ms: in a worker thread, as files are read
            async for chunk in read_tree(await trio.to_thread.run_sync(known.tree), req.item):
                yield chunk
            return
        root = self.execution_dir(req.execution_id).root
        if not root.exists():
            raise NotFoundError(f"no result for execution {req.execution_id} on this node")
        async for chunk in read_result(root, req.item):
            yield chunk

    async def _logs(self, peer_id: str, payload: bytes) -> AsyncIterator[bytes]:
        from bacalhau.bprotocol.framing import decode

        req = decode(payload, LogRequest)
        await self._owned_by(peer_id, req.execution_id)  # before any frame: unknown, or not this peer's

        async def status() -> LogEnd | None:
            if req.execution_id in self._scopes:
                return None  # accepted: queued, starting or running; its files may still grow
            ex = await self._store.get(req.execution_id)
            if ex.state == S.NEW:
                return None  # bid given, not yet accepted
            return LogEnd(ex.state.value, ex.result.exit_code if ex.result else None, ex.reason)

        ended = False

        async def ended_status() -> LogEnd | None:
            nonlocal ended
            end = await status()
            ended = end is not None
            return end

        async def printed() -> tuple[bytes, bytes]:
            # while it may still print (bid given, queued, running), it has printed only what is held: its
            # record is read (and its job parsed, megabytes maybe) once it has ended, not on every poll
            known = await self._held.lookup(req.execution_id) if ended else self._held.held(req.execution_id)
            if known is None or not known.ran:
                return b"", b""
            if len(known.stdout) <= 64 * 1024:
                return known.stdout.encode(), b""
            return await trio.to_thread.run_sync(known.stdout.encode), b""   # up to 4 MiB, 5-15 ms: not on the loop

        in_memory = await self._held.lookup(req.execution_id) is not None
        self.log_followers += 1
        try:
            if in_memory:
                chunks = stream_known_logs(printed, req, ended_status)
            else:
                chunks = stream_logs(self.execution_dir(req.execution_id).root, req, status)
            async for chunk in chunks:
                yield chunk
        finally:
            self.log_followers -= 1

    # -- work -----------------------------------------------------------------------------------------------

    def execution_dir(self, execution_id: str) -> ExecutionDir:
        """The execution's directory under the results directory: the id is a UUID (a peer sends it), and the
        path is checked to stay there whatever it is."""
        try:
            name = parse_execution_id(execution_id)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if self._results_base is None:
            self._results_base = self._results_dir.resolve()
        base = self._results_base
        root = base / name            # a UUID's text: one component, no "..", so only a symlink can lead out
        if root.is_symlink():
            root = root.resolve()
            if root.parent != base:
                raise ProtocolError(f"execution {execution_id!r} is not a directory under {base}")
        return ExecutionDir(root)

    async def _execute(self, ex: LocalExecution, scope: trio.CancelScope, preapproved: bool = False,
                       taken: Resources | None = None) -> None:
        """Run one execution. Whatever goes wrong escapes to the _spawn boundary, which fails it alone.
        `preapproved`: a run that ends well is published at once (no result_accepted to wait for). `taken`: the
        capacity it holds, its start written already (_ask_for_bid_approved)."""
        result = None
        try:
            with scope:
                room = (self.capacity.holding(taken) if taken is not None
                        else self.capacity.reserve(ex.job.spec.resources, ex.job.spec.engine))
                async with room:
                    executor = self._executors[ex.job.spec.engine]
                    exec_dir = await self._create_dir(ex)
                    if taken is None:
                        await self._store.update(ex.id, (S.BID_ACCEPTED,), S.RUNNING, STARTED)
                    mounts = await prepare_inputs(ex.job, exec_dir.inputs, self._storage)
                    await executor.start(ex.id, ex.job, exec_dir, mounts)
                    result = await executor.wait(ex.id)
                    if noted := await self._check_result(exec_dir):   # counted: a client skips an empty stderr
                        result = result.model_copy(update={"stderr_bytes": result.stderr_bytes + noted})
        finally:
            self._scopes.pop(ex.id, None)
        if scope.cancelled_caught or result is None:
            return  # _cancel recorded and reported it
        retried = result.exit_code != 0 and not result.error and ex.job.spec.retry.on_nonzero_exit
        if preapproved and not result.error and not retried:
            # the requester's decision would be result_accepted: published at once, the result recorded with
            # the reference in one write, before the requester is told (a crash before it fails the execution
            # at the next start, as one left publishing)
            await self._publish(ex, result)
            return
        if result.error:
            # the run hit its own limit (its timeout): the requester fails the job and sends nothing back, so the
            # node ends the execution here (it stayed running and busy, and drain() waited its grace for it)
            try:
                await self._store.update(ex.id, (S.RUNNING,), S.FAILED, result.error, result=result)
            except StateError:
                return  # cancelled meanwhile: _cancel recorded and reported it
            self._done(ex.id)
        else:
            await self._store.record_result(ex.id, result)
        # its record says from now on what it printed (HeldOutputs.of): the requester may never answer the
        # run-complete (nothing else ends the execution), and it must not pin its output in memory meanwhile
        self._held.release(ex.id)
        if retried:
            # this node holds the spec: it fails the attempt itself and the requester retries it elsewhere,
            # with no run-complete to answer with a result-rejected
            await self._fail(ex, f"exited with code {result.exit_code}; the job asks to be retried")
            return
        await self._send("on_run_complete", ex.requester_id,
                         m.RunComplete(execution_id=ex.id, job_id=ex.job.id, node_id=self.node_id, result=result))

    async def _create_dir(self, ex: LocalExecution) -> ExecutionDir:
        """The execution's directory, made; or, when its output is known before it runs (executors/noop.py), one
        that holds it in memory and is never made (making its four inodes cost more kernel CPU than the rest
        of a noop job): the node keeps that output while the execution is busy."""
        known = self._held.hold(ex)
        if known is None:
            return await trio.to_thread.run_sync(self._make_dir, ex.id)
        return ExecutionDir(self._results_dir / parse_execution_id(ex.id), known)   # a path never made

    def _make_dir(self, execution_id: str) -> ExecutionDir:
        """In a worker thread: finding the directory lstats it, and creating it may wait on the disk."""
        exec_dir = self.execution_dir(execution_id)
        exec_dir.create()
        return exec_dir

    async def _check_result(self, exec_dir: ExecutionDir) -> int:
        """Before the requester is told the job ran: the result must fit this node's --max-result-size. A
        result in memory is measured there (the spec caps a noop's stdout at MAX_NOOP_STDOUT_CHARS). The bytes
        of a note added to its stderr."""
        if exec_dir.known is not None:
            size = tree_size(exec_dir.known.tree())
            if size > self._max_result_size:
                raise ResultTooLarge(size, self._max_result_size)
            return 0
        return await trio.to_thread.run_sync(self._check_files, exec_dir)

    def _check_files(self, exec_dir: ExecutionDir) -> int:
        """In a worker thread: the result must fit this node's --max-result-size (apparent sizes, so a sparse
        terabyte is refused before any byte is hashed) and its disk must not be full. What publishing will skip
        (FIFOs, devices, sockets, names that are not UTF-8) is noted on the job's stderr: the note's bytes."""
        if os.statvfs(exec_dir.root).f_bavail == 0:
            raise failures.DiskFullError("no space was left on the device after the job ran")
        try:
            scan = scan_result(exec_dir.root)
        except OSError as exc:   # e.g. a path past PATH_MAX: the job's doing, not the node's
            raise ExecutorError(f"the job's outputs cannot be read for publishing: {exc}") from exc
        if scan.size > self._max_result_size:
            raise ResultTooLarge(scan.size, self._max_result_size)
        if not scan.skipped:
            return 0
        note = skipped_note(scan.skipped).encode()
        with open(exec_dir.stderr, "ab") as f:
            f.write(note)
        return len(note)

    async def _publish(self, ex: LocalExecution, result: RunResult | None = None) -> None:
        """Add the result to this node's blockstore as one UnixFS directory; the job records its CID. (The
        node also serves the files through get_result until bitswap serves them to the cluster.) With the
        `result` of a pre-approved execution, the requester hears both in one callback (on_run_published)."""
        from bacalhau.ipfs.unixfs import cid_to_bytes

        try:
            try:
                known = self._held.of(ex)     # its tree is encoded where its files would be found: in the thread
                cid = await self._publisher.publish(
                    known.tree if known is not None else (lambda: self.execution_dir(ex.id).root))
                if self._on_published is not None:
                    await self._on_published(cid_to_bytes(cid))
            except (OSError, BacalhauError) as exc:
                raise ExecutorError(f"the result could not be published: {exc}") from exc
            ref = f"ipfs://{cid}"
            if result is None:
                await self._store.update(ex.id, (S.PUBLISHING,), S.COMPLETED, "published", result_ref=ref)
                await self._send("on_publish_complete", ex.requester_id, m.PublishComplete(
                    execution_id=ex.id, job_id=ex.job.id, node_id=self.node_id, result_ref=ref))
                return
            try:
                await self._store.update(ex.id, (S.RUNNING,), S.COMPLETED, "ran and published (pre-approved)",
                                         result=result, result_ref=ref)
            except StateError:
                return  # cancelled meanwhile: _cancel recorded and reported it
            await self._send("on_run_published", ex.requester_id, m.RunPublished(
                execution_id=ex.id, job_id=ex.job.id, node_id=self.node_id, result=result, result_ref=ref))
        finally:
            self._done(ex.id)

    async def _fail_safely(self, ex: LocalExecution, reason: str, error: BaseException) -> None:
        """The boundary's last step: record and report the failure; if even that fails, log it (the requester
        reconciles an execution it hears nothing of)."""
        try:
            if failures.disk_full(error):
                # the job's own outputs are what filled the disk, most likely: without freeing them, not even
                # the failure could be recorded (the stores live on the same disk)
                await trio.to_thread.run_sync(self._free_result, ex.id)
            elif failures.never_published(error):
                await trio.to_thread.run_sync(self._free_result, ex.id)   # never to be published: no use here
                reason += "; its outputs were deleted from the node"
            await self._fail(ex, reason, retry=not failures.job_caused(error))
        except Exception:
            log.exception("could not record the failure of execution %s (%s)", ex.id, reason)
            self._done(ex.id)

    def _free_result(self, execution_id: str) -> None:
        exec_dir = self.execution_dir(execution_id)
        remove_tree(exec_dir.outputs)
        for path in (exec_dir.stdout, exec_dir.stderr):
            with contextlib.suppress(OSError):
                failures.keep_tail(path)

    async def _fail(self, ex: LocalExecution, reason: str, *, retry: bool = True) -> None:
        self._done(ex.id)
        try:
            await self._store.update(ex.id, None, S.FAILED, reason)
        except BacalhauError:
            return  # already terminal (cancelled)
        await self._notify_failure(ex, reason, retry=retry)

    def _done(self, execution_id: str) -> None:
        self._busy.discard(execution_id)
        self._held.release(execution_id)
        for executor in self._executors.values():   # (its container removed now: not while it is reported)
            executor.release(execution_id)
        self._idle.set()

    async def _notify_failure(self, ex: LocalExecution, reason: str, *, retry: bool = True) -> None:
        try:
            msg = m.ComputeFailure(execution_id=ex.id, job_id=ex.job.id, node_id=self.node_id, reason=reason,
                                   retry=retry)
        except ValueError:  # a row stored before ids were typed, with ids no requester made: nobody to tell
            log.warning("execution %r failed (%s); its ids are not ones a requester made, so none is told",
                        ex.id[:80], reason)
            return
        await self._send("on_compute_failure", ex.requester_id, msg)

    async def _send(self, name: str, requester_id: str, msg: object, delay: float = 0.0) -> None:
        """Tell the requester, sending again while it is not heard to answer (compute/callbacks.py)."""
        if delay:
            await trio.sleep(delay)
        await deliver(getattr(self._callbacks, name), requester_id, msg, policy=self._callback_retry, what=name)

    async def remove_result(self, execution_id: str) -> None:
        await trio.to_thread.run_sync(remove_tree, self.execution_dir(execution_id).root)


