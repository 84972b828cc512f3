"""The job store's in-memory view of unfinished jobs and their executions, so the requester's hot path (the
holder check on every callback, a job with its executions in every handler) reads no row, parses nothing and
hands nothing to a worker thread.

The database stays the truth. The view is written through: the store changes it only from a transaction's
`on_commit` hook (db.py), in commit order, so it never shows what is not on disk nor misses what is. It is
bounded: at most `max_jobs` unfinished jobs (a job submitted past that is read from disk, as before), and a job
that ends is kept among the last `recent` ended ones only (its waiters and the dashboard read it right after),
then dropped. Built from disk when the store opens.

Copy on write: a change makes a new Job (and a new list of executions) and nothing held is changed in place,
so a read hands out the held object itself, no copy, and what a reader holds never changes under it. Readers
treat what they get as a value (the requester never changes a Job or an Execution it read).
"""

from __future__ import annotations

from collections import OrderedDict

from bacalhau.models import Execution, Job, JobState

VIEW_MAX_JOBS = 4096       # unfinished jobs held; a noop job costs ~2 KB here
VIEW_RECENT_JOBS = 256     # ended jobs kept for the reads that follow an end
# a job whose spec (as stored, in characters) is longer is not held, only read from disk: a spec may be ~4 MB
# (inline inputs, env values), and 4096 of them held would be gigabytes any API client could make us keep
VIEW_MAX_SPEC_CHARS = 16 * 1024


class JobView:
    def __init__(self, max_jobs: int = VIEW_MAX_JOBS, recent: int = VIEW_RECENT_JOBS) -> None:
        self.max_jobs = max_jobs
        self.recent = recent
        self._jobs: dict[str, Job] = {}                      # unfinished and recently ended
        self._ended: OrderedDict[str, None] = OrderedDict()  # the ended ones among them, oldest first
        self._holder: dict[str, str] = {}                    # execution id -> job id, for the jobs held

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def unfinished(self) -> int:
        return len(self._jobs) - len(self._ended)

    # -- reads ----------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def execution(self, execution_id: str) -> Execution | None:
        job_id = self._holder.get(execution_id)
        if job_id is None:
            return None
        return next((e for e in self._jobs[job_id].executions if e.id == execution_id), None)

    def holder(self, execution_id: str) -> tuple[str, str] | None:
        """(node id, job id) of an execution held."""
        ex = self.execution(execution_id)
        return None if ex is None else (ex.node_id, ex.job_id)

    # -- written through, from commit hooks -----------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        """A job as it is on disk (with its executions), if unfinished and there is room."""
        if job.state.terminal or job.id in self._jobs or self.unfinished >= self.max_jobs:
            return
        self._jobs[job.id] = job.model_copy(update={"executions": list(job.executions), "events": []})
        for ex in job.executions:
            self._holder[ex.id] = job.id

    def job_moved(self, job_id: str, state: JobState, reason: str, updated_at: float) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        self._jobs[job_id] = job.model_copy(update={"state": state, "reason": reason, "updated_at": updated_at})
        if state.terminal and job_id not in self._ended:
            self._ended[job_id] = None
            while len(self._ended) > self.recent:
                self._drop(self._ended.popitem(last=False)[0])

    def execution_added(self, ex: Execution) -> None:
        job = self._jobs.get(ex.job_id)
        if job is None:
            return
        executions = list(job.executions)
        at = len(executions)      # ordered by created_at, as the store reads them; a tie goes after
        while at and executions[at - 1].created_at > ex.created_at:
            at -= 1
        executions.insert(at, ex)
        self._jobs[ex.job_id] = job.model_copy(update={"executions": executions})
        self._holder[ex.id] = ex.job_id

    def execution_moved(self, ex: Execution) -> None:
        job_id = self._holder.get(ex.id)
        if job_id is None:
            return
        job = self._jobs[job_id]
        executions = [ex if held.id == ex.id else held for held in job.executions]
        self._jobs[job_id] = job.model_copy(update={"executions": executions})

    def _drop(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            for ex in job.executions:
                self._holder.pop(ex.id, None)
