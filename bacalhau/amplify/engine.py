"""The Amplify engine: runs workflows over CIDs as real jobs, durably.

A run is queued (in the store, so a restart finds it), then started when fewer than `max_running` run; each
graph node becomes a task that waits for its parents, decides from their states and stdout whether it runs, is
skipped or fails, and otherwise submits its job through the requester (in process), waits for it and takes the
`outputs` directory of the job's published result as its output CID, which its children mount. A node whose
job fails is resubmitted `retries` times, `backoff` seconds apart, doubling. Every state change is written
before it is acted on:

    queued -> running (attempt k, job id once submitted) -> succeeded | failed
    queued -> skipped | failed (decided from the parents) ;  queued | running -> cancelled (the run's)

so a node found `running` with a job id after a `kill -9` is re-attached to that job, and a node that ended is
never run again. Cancelling a run cancels its scope and the jobs its nodes have in flight.

One failing node fails alone (recorded with its reason; its children follow their on_parent_failure); one
failing run fails alone; the engine goes on.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bacalhau.amplify.jobs import LABEL_ATTEMPT, LABEL_NODE, LABEL_RUN, job_failure, job_spec, read_result
from bacalhau.amplify.store import AmplifyStore, Memo, NodeRecord, NodeState, Product, RunRecord, RunState
from bacalhau.amplify.workflow import (
    NodeDef,
    OnParentFailure,
    Workflow,
    parsed_workflow,
    predicate_matches,
)
from bacalhau.errors import BacalhauError, StateError, UserError
from bacalhau.models import JobSpec

if TYPE_CHECKING:
    from bacalhau.api.ports import ContentStore, JobStoreReader, RequesterEndpoint
    from bacalhau.models import Execution, Job

log = logging.getLogger(__name__)
SelectFiles = Callable[["ContentStore", bytes, str], Awaitable["bytes | None"]]
DEFAULT_MAX_RUNNING = 10       # the original's defaults: concurrent workflows,
DEFAULT_MAX_WAITING = 100      # waiting workflows,
DEFAULT_MAX_NODES = 10         # graph nodes with a job in flight at once (all runs together)
MAX_SELECTIONS_KEPT = 4096     # per-file selections remembered (each a CID: a few hundred KiB in all)
WAIT_POLL = 1.0                # a job's state is read at least this often while a node waits for it
CLIENT_ID = "amplify"
RESUME_SCAN = 1000             # newest jobs looked through for one submitted just before a crash
MAX_TRIGGERS_PENDING = 10_000  # changed jobs not yet looked at by the label trigger (past it: the oldest dropped)
TRIGGER_RUNS = uuid.UUID("6d1f3c52-8a51-4f0e-9d7e-1f7a0c3b9a21")   # a triggered run's id: uuid5 of its job's id


@dataclass(frozen=True)
class AmplifyLimits:
    max_running: int = DEFAULT_MAX_RUNNING
    max_waiting: int = DEFAULT_MAX_WAITING
    max_nodes: int = DEFAULT_MAX_NODES


@dataclass
class _Run:
    record: RunRecord
    workflow: Workflow
    done: dict[str, trio.Event] = field(default_factory=dict)


class _Outcome(Exception):
    """How a node ended before or instead of its job: skipped or failed, with the reason."""

    def __init__(self, state: NodeState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class Amplify:
    def __init__(self, store: AmplifyStore, requester: RequesterEndpoint, jobs: JobStoreReader,
                 content: ContentStore, *, default_workflow: str = "", limits: AmplifyLimits | None = None,
                 select: SelectFiles | None = None, trigger_label: str = "") -> None:
        self.store = store
        self._requester = requester
        self._jobs = jobs
        self._content = content
        self.default_workflow = default_workflow
        self.limits = limits or AmplifyLimits()
        self._select = select
        self._queue: collections.deque[str] = collections.deque()
        self._running = 0
        self._wake = trio.Event()
        self._scopes: dict[str, trio.CancelScope] = {}
        self._node_slots = trio.CapacityLimiter(self.limits.max_nodes)
        self._nursery: trio.Nursery | None = None
        self._selected: dict[tuple[str, str], str | None] = {}    # (CID, mime pattern) -> the selection
        key, _, value = trigger_label.partition("=")
        self._trigger = (key, value if "=" in trigger_label else None) if key else None
        self._changed: dict[str, None] = {}     # job ids the label trigger has still to look at, oldest first
        self._changed_event = trio.Event()

    # -- lifetime -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Amplify] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for run in await self.store.unfinished():
                if run.state == RunState.RUNNING:      # it was running when the node stopped: resume it now
                    self._running += 1
                    nursery.start_soon(self._guarded, run.id)
                else:
                    self._queue.append(run.id)
            nursery.start_soon(self._dispatch)
            if self._trigger is not None:
                nursery.start_soon(self._triggers)
            task_status.started(self)

    async def _dispatch(self) -> None:
        while True:
            while self._queue and self._running < self.limits.max_running:
                run_id = self._queue.popleft()
                self._running += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._guarded, run_id)
            self._wake = trio.Event()
            await self._wake.wait()

    # -- the label trigger: a cluster job so labelled that completes queues a run over its outputs -----------

    def job_changed(self, job_id: str) -> None:
        """The requester's hook (on_change): a job changed; the trigger task reads it soon."""
        if self._trigger is None:
            return
        self._changed[job_id] = None
        while len(self._changed) > MAX_TRIGGERS_PENDING:
            self._changed.pop(next(iter(self._changed)))
        self._changed_event.set()

    async def _triggers(self) -> None:
        while True:
            await self._changed_event.wait()
            self._changed_event = trio.Event()
            while self._changed:
                job_id = next(iter(self._changed))
                del self._changed[job_id]
                try:
                    await self._triggered(job_id)
                except Exception as exc:    # one job's trigger fails alone
                    log.warning("amplify trigger for job %s: %r", job_id, exc)

    async def _triggered(self, job_id: str) -> None:
        from bacalhau.models import JobState

        assert self._trigger is not None
        key, value = self._trigger
        job = await self._jobs.get_job(job_id, full=False)
        labels = job.spec.labels
        if job.state != JobState.COMPLETED or key not in labels or (value is not None and labels[key] != value):
            return
        if LABEL_RUN in labels:       # a step of a run: never a trigger, so a workflow cannot loop on itself
            return
        failure, execution = job_failure(job)
        if failure or execution is None:
            log.info("amplify trigger: job %s is not run over (%s)", job_id, failure)
            return
        output, _ = await self._harvest(execution)
        run_id = str(uuid.uuid5(TRIGGER_RUNS, job_id))      # the same job twice is the same run
        _, new = await self.submit(run_id, output, None, job.client_id)
        if new:
            log.info("amplify trigger: job %s (label %s) queued run %s over %s", job_id, key, run_id, output)

    # -- the API's calls ------------------------------------------------------------------------------------

    async def submit(self, run_id: str, cid: str, workflow: str | None = None,
                     client_id: str = "", *, no_cache: bool = False) -> tuple[RunRecord, bool]:
        """Queue a run of `workflow` (the node's default when None) over `cid` for `client_id` (its jobs are
        submitted as theirs); the same id again is the same run (idempotent). QueueFull when max_waiting runs
        wait. With `no_cache` every step runs (none is served from the memo of the same step's results)."""
        text = workflow if workflow is not None else self.default_workflow
        if not text:
            raise UserError("this node has no default workflow (serve --amplify-workflow FILE): give one")
        wf = await trio.to_thread.run_sync(parsed_workflow, text)    # up to 256 KiB of YAML: off the event loop
        run, new = await self.store.create_run(run_id, cid, text, wf.order(), self.limits.max_waiting, client_id,
                                                no_cache)
        if new:
            log.info("amplify run %s queued for %s", run_id, cid)
            self._queue.append(run_id)
            self._wake.set()
        return run, new

    async def cancel(self, run_id: str, reason: str = "cancelled by the user") -> RunRecord:
        jobs = await self.store.cancel_run(run_id, reason)
        if run_id in self._queue:
            self._queue.remove(run_id)
        scope = self._scopes.get(run_id)
        if scope is not None:
            scope.cancel()
        for job_id in jobs:
            await self._cancel_job(job_id, reason)
        log.info("amplify run %s cancelled (%d jobs in flight cancelled)", run_id, len(jobs))
        return await self.store.get_run(run_id)

    async def _cancel_job(self, job_id: str, reason: str) -> None:
        try:
            await self._requester.cancel(job_id, f"amplify: {reason}")
        except (StateError, UserError):
            pass   # it ended meanwhile, or is unknown

    # -- a run ----------------------------------------------------------------------------------------------

    async def _guarded(self, run_id: str) -> None:
        try:
            await self._run(run_id)
        except Exception as exc:   # one run fails alone, with a reason
            log.warning("amplify run %s failed: %r", run_id, exc)
            reason = str(exc) if isinstance(exc, BacalhauError) else f"internal error: {exc!r}"
            try:
                await self.store.set_run(run_id, (RunState.QUEUED, RunState.RUNNING), RunState.FAILED, reason[:300])
            except BacalhauError:
                pass
        finally:
            self._scopes.pop(run_id, None)
            self._running -= 1
            self._wake.set()

    async def _run(self, run_id: str) -> None:
        record = await self.store.get_run(run_id)
        if record.state.terminal:
            return
        if not await self.store.set_run(run_id, (RunState.QUEUED, RunState.RUNNING), RunState.RUNNING):
            return    # cancelled meanwhile
        run = _Run(record, await trio.to_thread.run_sync(parsed_workflow, record.workflow))
        run.done = {node_id: trio.Event() for node_id in run.workflow.order()}
        with trio.CancelScope() as scope:
            self._scopes[run_id] = scope
            async with trio.open_nursery() as nursery:
                for node_id in run.workflow.order():
                    nursery.start_soon(self._node_task, run, node_id)
        if scope.cancelled_caught:
            return
        final = await self.store.get_run(run_id)
        failed = [n for n in final.nodes.values() if n.state == NodeState.FAILED]
        children = run.workflow.children()
        leaves = [final.nodes[n].output_cid for n in run.workflow.order()
                  if not children[n] and final.nodes[n].state == NodeState.SUCCEEDED and final.nodes[n].output_cid]
        if failed:
            reason = "; ".join(f"node {n.node_id} failed: {n.reason}" for n in failed)[:300]
            await self.store.set_run(run_id, (RunState.RUNNING,), RunState.FAILED, reason, list(dict.fromkeys(leaves)))
        else:
            await self.store.set_run(run_id, (RunState.RUNNING,), RunState.SUCCEEDED, "",
                                     list(dict.fromkeys(leaves)))
        log.info("amplify run %s ended: %s", run_id, "failed" if failed else "succeeded")

    async def _node_task(self, run: _Run, node_id: str) -> None:
        node = run.workflow.node(node_id)
        try:
            for parent in node.parents():
                await run.done[parent].wait()
            rec = run.record.nodes[node_id]
            if not rec.state.terminal:
                await self._drive(run, node, rec)
        except _Outcome as outcome:
            await self._end(run, node_id, outcome.state, outcome.reason)
        except Exception as exc:   # this node fails alone
            await trio.lowlevel.checkpoint()   # unless the node is stopping (then this raises Cancelled)
            log.warning("amplify run %s node %s: %r", run.record.id, node_id, exc)
            reason = str(exc) if isinstance(exc, BacalhauError) else f"internal error: {exc!r}"
            await self._end(run, node_id, NodeState.FAILED, reason[:300])
        finally:
            run.done[node_id].set()

    async def _end(self, run: _Run, node_id: str, state: NodeState, reason: str, **kw: Any) -> None:
        await self.store.set_node(run.record.id, node_id, state, reason=reason, **kw)
        rec = run.record.nodes[node_id]
        if not rec.state.terminal:
            rec.state, rec.reason = state, reason
            if "output_cid" in kw:
                rec.output_cid = kw["output_cid"]
            if "stdout" in kw:
                rec.stdout = kw["stdout"]
            rec.cached = bool(kw.get("cached"))

    # -- a node ---------------------------------------------------------------------------------------------

    async def _drive(self, run: _Run, node: NodeDef, rec: NodeRecord) -> None:
        job_def = run.workflow.job(node.job_id)
        if job_def.type == "internal":     # the root job: its output is the run's CID
            await self._end(run, node.id, NodeState.SUCCEEDED, "", output_cid=run.record.cid)
            return
        mounts = await self._mounts(run, node)
        try:
            spec = job_spec(job_def, [(cid, path) for cid, path, _ in mounts], run.record.id, node.id)
        except ValueError as exc:    # pydantic's: a spec the requester would refuse
            from bacalhau.db import why

            raise _Outcome(NodeState.FAILED, f"its job's spec is refused: {why(exc)}") from None
        inputs = tuple(dict.fromkeys(c for cid, _, origin in mounts for c in (cid, origin)))
        spec_hash = hashlib.sha256(spec.model_dump_json(exclude={"labels"}).encode()).hexdigest()
        image = (job_def.image or "") if job_def.engine == "docker" else "wasm"
        if rec.state == NodeState.QUEUED and not run.record.no_cache:
            memo = await self.store.recall(spec_hash)
            if memo is not None:     # the same step over the same CIDs succeeded before: its result, no job
                await self.store.record_product(Product(memo.output_cid, run.record.id, node.id, memo.job_id,
                                                        spec_hash, memo.image, memo.compute_node, inputs))
                log.info("amplify run %s node %s: from the cache (job %s)", run.record.id, node.id, memo.job_id)
                await self._end(run, node.id, NodeState.SUCCEEDED, f"from the cache: job {memo.job_id}'s result",
                                output_cid=memo.output_cid, stdout=memo.stdout, cached=True)
                return
        attempt = max(rec.attempt, 1)
        if rec.state == NodeState.RUNNING and not rec.job_id:
            # the node stopped between writing the attempt down and writing its job's id: the job may exist
            rec.job_id = await self._submitted_before(run.record.id, node.id, attempt)
        resume = rec.state == NodeState.RUNNING and bool(rec.job_id)
        while True:
            async with self._node_slots:
                if resume:
                    job_id = rec.job_id
                    resume = False
                    log.info("amplify run %s node %s: re-attached to job %s", run.record.id, node.id, job_id)
                else:
                    job_id = await self._submit(run, node, spec, attempt)
                job = await self._wait_job(job_id)
            failure, execution = job_failure(job)
            if execution is not None and not failure:
                output, stdout = await self._harvest(execution)
                for cid in (output, execution.result_ref.removeprefix("ipfs://")):
                    await self.store.record_product(Product(cid, run.record.id, node.id, job.id, spec_hash,
                                                            image, execution.node_id, inputs))
                await self.store.remember(spec_hash, Memo(output, stdout, job.id, image, execution.node_id))
                await self._end(run, node.id, NodeState.SUCCEEDED, "", output_cid=output, stdout=stdout)
                return
            if attempt > node.retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise _Outcome(NodeState.FAILED, f"job {job.id}: {failure}{tries}")
            delay = node.backoff * 2 ** (attempt - 1)
            log.info("amplify run %s node %s: attempt %d failed (%s); again in %gs", run.record.id, node.id,
                     attempt, failure, delay)
            await self.store.set_node(run.record.id, node.id, NodeState.RUNNING,
                                      reason=f"attempt {attempt} failed: {failure}; retrying in {delay:g}s")
            await trio.sleep(delay)
            attempt += 1

    async def _mounts(self, run: _Run, node: NodeDef) -> list[tuple[str, str, str]]:
        """(CID, path, the CID it was selected from) for each mounted input, or _Outcome when the node does
        not run: a gate's predicate did not match, a parent failed, nothing is left to mount."""
        mounts: list[tuple[str, str, str]] = []
        for inp in node.inputs:
            if inp.root:
                source = run.record.cid
            else:
                assert inp.node_id is not None
                parent = run.record.nodes[inp.node_id]
                if parent.state == NodeState.SKIPPED:
                    if inp.path is None:
                        raise _Outcome(NodeState.SKIPPED, f"parent {inp.node_id} was skipped")
                    continue
                if parent.state != NodeState.SUCCEEDED:
                    policy = node.on_parent_failure
                    why = f"parent {inp.node_id} {parent.state.value}"
                    if policy == OnParentFailure.SKIP:
                        raise _Outcome(NodeState.SKIPPED, why)
                    if policy == OnParentFailure.FAIL:
                        raise _Outcome(NodeState.FAILED, why)
                    continue
                if inp.predicate is not None and not predicate_matches(inp.predicate, parent.stdout):
                    raise _Outcome(NodeState.SKIPPED, f"predicate {inp.predicate[:80]!r} does not match the "
                                                      f"stdout of {inp.node_id}")
                source = parent.output_cid
            if inp.path is not None:
                mounts.append((source, inp.path, source))
        if not mounts:
            raise _Outcome(NodeState.SKIPPED, "no inputs are left to mount (its parents were skipped or failed)")
        if node.when is None:
            return mounts
        selected = []
        for cid, path, origin in mounts:
            chosen = await self._select_files(cid, node.when.mime)
            if chosen is not None:
                await self.store.record_product(Product(chosen, run.record.id, node.id, "", "",
                                                        f"select {node.when.mime}", "", (cid,)))
                selected.append((chosen, path, origin))
        if not selected:
            raise _Outcome(NodeState.SKIPPED, f"no file matches {node.when.mime}")
        return selected

    async def _select_files(self, cid: str, mime: str) -> str | None:
        from bacalhau.ipfs.unixfs import cid_str, cid_to_bytes

        select = self._select
        if select is None:
            import importlib

            try:   # content detection: bacalhau/amplify/content.py
                select = importlib.import_module("bacalhau.amplify.content").select_files
            except ImportError:
                raise UserError("per-file routing (`when:`) needs content detection, which this node "
                                "lacks") from None
        key = (cid, mime)
        if key in self._selected:         # content-addressed: the same CID and pattern select the same files
            return self._selected[key]
        chosen = await select(self._content, cid_to_bytes(cid), mime)
        self._selected[key] = cid_str(chosen) if chosen is not None else None
        while len(self._selected) > MAX_SELECTIONS_KEPT:
            self._selected.pop(next(iter(self._selected)))
        return self._selected[key]

    async def _submit(self, run: _Run, node: NodeDef, spec: JobSpec, attempt: int) -> str:
        """Submit the node's job and write its id down; shielded, so a cancel cannot land between the two and
        leave a job no one knows of running."""
        run_id = run.record.id
        if not await self.store.set_node(run_id, node.id, NodeState.RUNNING, attempt=attempt, job_id=""):
            raise _Outcome(NodeState.CANCELLED, "its run was cancelled")
        labelled = spec.model_copy(update={"labels": {**spec.labels, LABEL_ATTEMPT: str(attempt)}})
        with trio.CancelScope(shield=True):
            job = await self._requester.submit(labelled, client_id=run.record.client_id or CLIENT_ID)
            kept = await self.store.set_node(run_id, node.id, NodeState.RUNNING, attempt=attempt, job_id=job.id)
            if not kept:
                await self._cancel_job(job.id, "its run was cancelled")
        run.record.nodes[node.id].job_id = job.id
        log.info("amplify run %s node %s: job %s (attempt %d)", run_id, node.id, job.id, attempt)
        await trio.lowlevel.checkpoint()
        return job.id

    async def _submitted_before(self, run_id: str, node_id: str, attempt: int) -> str:
        """The job of this attempt if it was submitted (found by its labels among the newest jobs), else ""."""
        want = {LABEL_RUN: run_id, LABEL_NODE: node_id, LABEL_ATTEMPT: str(attempt)}
        for job in await self._jobs.list_jobs(RESUME_SCAN):
            if all(job.spec.labels.get(k) == v for k, v in want.items()):
                await self.store.set_node(run_id, node_id, NodeState.RUNNING, attempt=attempt, job_id=job.id)
                return job.id
        return ""

    async def _wait_job(self, job_id: str) -> Job:
        while True:
            job = await self._jobs.get_job(job_id, full=False)   # executions, not events
            if job.state.terminal:
                return job
            await self._requester.wait_for_change(job_id, WAIT_POLL)

    async def _harvest(self, execution: Execution) -> tuple[str, str]:
        """The result's `outputs` directory CID and the start of its stdout."""
        from bacalhau.ipfs.result_ref import parse_result_ref

        result = parse_result_ref(execution.result_ref)
        await self._content.fetch_cid(result)
        return await trio.to_thread.run_sync(read_result, result, self._content.blockstore)
