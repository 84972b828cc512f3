"""The requester's job store: jobs, executions and every state change as an event, in SQLite.

Updates are compare-and-set on the expected state: a transition the table forbids raises
IllegalTransitionError, and one whose expected state is stale raises StateError.

A row that does not parse never fails a read: it reads as a failed job (or execution) whose reason says so.
At open, unfinished jobs (the ones a starting requester acts on) whose row or whose executions' rows do not
parse are set aside (a copy in `quarantine`) and rewritten as failed, so the node starts and serves.

Unfinished jobs are also held in memory (requester/view.py), written through from each transaction's commit
hook: `get_job(full=False)`, `get_execution` and `execution_holder` of a job held read no row and take no worker
thread. An execution's change and its job's (`update_execution(..., job_to=...)`) go in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from bacalhau.db import QUARANTINE, UNREADABLE_SPEC, Database, real, set_aside, why
from bacalhau.errors import AmbiguousIdError, NotFoundError, ReplayedSignature, StateError
from bacalhau.models import Event, Execution, ExecutionState, Job, JobSpec, JobState, RunResult
from bacalhau.models.state import check_execution_transition, check_job_transition
from bacalhau.requester.view import VIEW_MAX_JOBS, VIEW_MAX_SPEC_CHARS, JobView
from bacalhau.signing import MAX_AGE

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    client_id TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, node_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', result TEXT, result_ref TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_job ON executions(job_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', node_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
"""
# Looked up on the scheduler's paths: jobs by state (the jobs waiting for a node, when one joins; the unfinished
# ones, at start) and the unfinished executions of a node (when it is lost). Without them each was a scan of
# every job and execution ever stored.
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS executions_node_state ON executions(node_id, state);
"""
# The signatures of submits accepted (a replayed one is refused), written in the job's own transaction: one durable
# commit a submit instead of a second one in api.db before it. Rows leave once past the signatures' window.
SIGNATURES = """
CREATE TABLE IF NOT EXISTS seen_signatures (signature TEXT PRIMARY KEY, signed_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_signatures_signed_at ON seen_signatures(signed_at);
"""
# An execution asked pre-approved (bprotocol/messages.py: its node runs it on the ask alone) says so in a column of
# its own: a restarted requester takes a node's word that it runs one only for these. Before it, the requester
# knew them by their reason's first words, which the executions already in flight keep: read once, here.
PREAPPROVED = """
ALTER TABLE executions ADD COLUMN preapproved INTEGER NOT NULL DEFAULT 0;
UPDATE executions SET preapproved = 1
    WHERE reason GLOB 'bid accepted (pre-approved*' OR reason GLOB 'running (pre-approved)*'
"""
# 0 -> 1: the quarantine table; 1 -> 2: INDEXES; 2 -> 3: SIGNATURES; 3 -> 4: PREAPPROVED
MIGRATIONS = [QUARANTINE, INDEXES, SIGNATURES, PREAPPROVED]
SIGNATURE_WINDOW = 2 * MAX_AGE      # a signature is good MAX_AGE either side of the clock
ASKED_REASON = "asked for a bid"     # an execution's reason when it is written, before its node is asked
_UNFINISHED_JOB = [s.value for s in JobState if not s.terminal]
_UNFINISHED_EXECUTION = [s.value for s in ExecutionState if not s.terminal]


def _event(conn: sqlite3.Connection, job_id: str, kind: str, subject: str, state: str, reason: str,
           node_id: str = "", at: float | None = None) -> None:
    conn.execute(
        "INSERT INTO events(job_id, time, kind, subject, state, reason, node_id) VALUES (?,?,?,?,?,?,?)",
        (job_id, at or time.time(), kind, subject, state, reason, node_id),
    )


def _move_job(conn: sqlite3.Connection, job_id: str, expected: JobState | None, new: JobState, reason: str,
              at: float | None = None) -> float:
    """Compare-and-set a job's state, with its event (at `at`, when it happened: now by default); returns the
    time written."""
    row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    current = JobState(row["state"])
    if expected is not None and current != expected:
        raise StateError(f"job {job_id}: expected state {expected.value}, found {current.value}")
    check_job_transition(job_id, current, new)
    now = at or time.time()
    conn.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?", (new.value, reason, now, job_id))
    _event(conn, job_id, "job", job_id, new.value, reason, at=now)
    return now


def _unfinished_jobs(conn: sqlite3.Connection, limit: int) -> list[Job]:
    """The oldest `limit` unfinished jobs with their executions (what the view starts with)."""
    marks = ",".join("?" * len(_UNFINISHED_JOB))
    jobs = [_row_to_job(r) for r in conn.execute(
        f"SELECT * FROM jobs WHERE state IN ({marks}) AND length(spec) <= ? ORDER BY created_at LIMIT {int(limit)}",
        [*_UNFINISHED_JOB, VIEW_MAX_SPEC_CHARS])]
    for job in jobs:
        rows = conn.execute("SELECT * FROM executions WHERE job_id=? ORDER BY created_at", (job.id,)).fetchall()
        job.executions = [_row_to_execution(r) for r in rows]
    return jobs


def _insert_execution(conn: sqlite3.Connection, execution: Execution, reason: str, preapproved: bool) -> None:
    conn.execute(
        "INSERT INTO executions(id, job_id, node_id, state, reason, created_at, updated_at, preapproved)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (execution.id, execution.job_id, execution.node_id, execution.state.value, reason,
         execution.created_at, execution.updated_at, int(preapproved)),
    )
    _event(conn, execution.job_id, "execution", execution.id, execution.state.value, reason, execution.node_id)


def _held(execution: Execution, reason: str) -> Execution:
    """The execution as the view holds it once written."""
    return execution.model_copy(update={"reason": reason, "result": None, "result_ref": ""})


def _record_signature(conn: sqlite3.Connection, signature: str, signed_at: float) -> None:
    conn.execute("DELETE FROM seen_signatures WHERE signed_at < ?", (time.time() - SIGNATURE_WINDOW,))
    if conn.execute("INSERT OR IGNORE INTO seen_signatures(signature, signed_at) VALUES (?,?)",
                    (signature, signed_at)).rowcount != 1:
        raise ReplayedSignature()


def _parse_execution(row: sqlite3.Row) -> Execution:
    return Execution(
        id=row["id"], job_id=row["job_id"], node_id=row["node_id"], state=ExecutionState(row["state"]),
        reason=row["reason"], created_at=row["created_at"], updated_at=row["updated_at"],
        result=RunResult.model_validate_json(row["result"]) if row["result"] else None,
        result_ref=row["result_ref"],
    )


def _parse_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], spec=JobSpec.model_validate_json(row["spec"]), state=JobState(row["state"]),
        reason=row["reason"], client_id=row["client_id"], created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _row_to_execution(row: sqlite3.Row) -> Execution:
    try:
        return _parse_execution(row)
    except (ValueError, TypeError) as exc:     # pydantic's ValidationError is a ValueError
        return Execution.model_construct(
            id=str(row["id"]), job_id=str(row["job_id"]), node_id=str(row["node_id"]), state=ExecutionState.FAILED,
            reason=f"stored execution could not be read: {why(exc)}", created_at=real(row["created_at"], 0.0),
            updated_at=real(row["updated_at"], 0.0), result=None, result_ref="")


def _row_to_job(row: sqlite3.Row) -> Job:
    try:
        return _parse_job(row)
    except (ValueError, TypeError) as exc:
        return Job.model_construct(
            id=str(row["id"]), spec=JobSpec.model_validate_json(UNREADABLE_SPEC), state=JobState.FAILED,
            reason=f"stored job could not be read: {why(exc)}", client_id=str(row["client_id"]),
            created_at=real(row["created_at"], 0.0), updated_at=real(row["updated_at"], 0.0), executions=[],
            events=[])


def _row_to_event(row: sqlite3.Row) -> Event:
    try:
        return Event(time=row["time"], kind=row["kind"], subject=row["subject"], state=row["state"],
                     reason=row["reason"], node_id=row["node_id"])
    except (ValueError, TypeError) as exc:
        return Event.model_construct(time=real(row["time"], 0.0), kind=str(row["kind"]), subject=str(row["subject"]),
                                     state=str(row["state"]), reason=f"stored event could not be read: {why(exc)}",
                                     node_id="")


def _set_aside_unreadable(conn: sqlite3.Connection) -> list[str]:
    """Unfinished jobs whose row, or one of whose executions' rows, does not parse: each row kept in
    `quarantine` and rewritten as failed with the reason (a row even that does not fix is removed). Returns
    the ids of the jobs failed."""
    terminal = [s.value for s in JobState if s.terminal]
    rows = conn.execute(    # NOT IN: a state this version does not know (a damaged row) is looked at too
        f"SELECT rowid AS rid, * FROM jobs WHERE state NOT IN ({','.join('?' * len(terminal))})", terminal
    ).fetchall()
    failed = []
    now = time.time()
    for row in rows:
        reason = ""
        for ex in conn.execute("SELECT rowid AS rid, * FROM executions WHERE job_id=?", (row["id"],)).fetchall():
            try:
                _parse_execution(ex)
            except (ValueError, TypeError) as exc:
                error = why(exc)
                set_aside(conn, "executions", ex, error)
                text = f"stored execution could not be read: {error}"
                conn.execute("UPDATE executions SET state=?, reason=?, result=NULL, result_ref='', created_at=?,"
                             " updated_at=? WHERE rowid=?", (ExecutionState.FAILED.value, text,
                                                             real(ex["created_at"], now), now, ex["rid"]))
                reason = reason or f"execution {str(ex['id'])[:36]} {text}"
        try:
            _parse_job(row)
        except (ValueError, TypeError) as exc:
            error = why(exc)
            set_aside(conn, "jobs", row, error)
            conn.execute("UPDATE jobs SET spec=?, client_id=?, created_at=? WHERE rowid=?",
                         (UNREADABLE_SPEC, str(row["client_id"] or ""), real(row["created_at"], now), row["rid"]))
            reason = f"stored job could not be read: {error} (its row is kept in the quarantine table of jobs.db)"
        if not reason:
            continue
        conn.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE rowid=?",
                     (JobState.FAILED.value, reason, now, row["rid"]))
        fixed = conn.execute("SELECT * FROM jobs WHERE rowid=?", (row["rid"],)).fetchone()
        try:
            _parse_job(fixed)
        except (ValueError, TypeError):
            conn.execute("DELETE FROM jobs WHERE rowid=?", (row["rid"],))   # e.g. an id no Job takes
            continue
        _event(conn, fixed["id"], "job", fixed["id"], JobState.FAILED.value, reason)
        failed.append(fixed["id"])
    return failed


class JobStore:
    def __init__(self, path: Path, *, view_max_jobs: int = VIEW_MAX_JOBS) -> None:
        self._db = Database(path, SCHEMA, MIGRATIONS)
        self.set_aside = self._db.run_sync(_set_aside_unreadable)   # ids of the jobs failed for it at open
        if self.set_aside:
            log.warning("%d unfinished jobs in %s could not be read: failed, their rows kept in its quarantine "
                        "table (%s)", len(self.set_aside), path, ", ".join(self.set_aside))
        self.view = JobView(view_max_jobs)
        for job in self._db.run_sync(lambda conn: _unfinished_jobs(conn, view_max_jobs)):
            self.view.add_job(job)

    def close(self) -> None:
        self._db.close()

    async def create_job(self, job: Job, *, signature: tuple[str, float] | None = None,
                         execution: Execution | None = None, preapproved: bool = False) -> None:
        """Store a new job; with `signature` (the submit's signature and when it was signed), record that in
        the same transaction: ReplayedSignature, and no job, if it was recorded before. With `execution`, its
        first execution too (asked for a bid; `preapproved` as create_execution's), in the same transaction: a
        plain job's one write before its ask."""
        def tx(conn: sqlite3.Connection) -> bool:
            if signature is not None:
                _record_signature(conn, *signature)
            spec = job.spec.model_dump_json()
            conn.execute(
                "INSERT INTO jobs(id, spec, state, reason, client_id, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                (job.id, spec, job.state.value, job.reason, job.client_id, job.created_at, job.updated_at),
            )
            _event(conn, job.id, "job", job.id, job.state.value, "submitted")
            if execution is not None:
                _insert_execution(conn, execution, ASKED_REASON, preapproved)
            return len(spec) <= VIEW_MAX_SPEC_CHARS     # a big spec is read from disk, not held (view.py)

        def on_commit(small: bool) -> None:
            if small:
                self.view.add_job(held)

        first = [] if execution is None else [_held(execution, ASKED_REASON)]
        held = job.model_copy(update={"executions": first, "events": []})
        await self._db.run(tx, on_commit=on_commit)

    def remember_signatures(self, signatures: list[tuple[str, float]]) -> None:
        """Signatures accepted elsewhere (api.db, before submits' moved here), refused from now on. Start-up only."""
        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO seen_signatures(signature, signed_at) VALUES (?,?)", signatures)

        if signatures:
            self._db.run_sync(tx)

    async def resolve_id(self, prefix: str) -> str:
        """A full job id, or a unique prefix of one."""
        def tx(conn: sqlite3.Connection) -> list[str]:
            # a range of the primary key's index: LIKE (case-blind) read every job, on every API lookup of
            # one, so a job's lookup slowed as the store grew. Ids are lower-case UUIDs, so the prefix is too.
            low = prefix.lower()
            rows = conn.execute(
                "SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 3", (low, low + "\U0010ffff")
            ).fetchall()
            return [r["id"] for r in rows]

        if not prefix:
            raise NotFoundError("no job id given")
        if self.view.job(prefix) is not None:
            return prefix      # a whole id (every API call on a job resolves it): an exact match wins anyway
        ids = await self._db.run(tx, reads=True)
        if prefix in ids:
            return prefix
        if not ids:
            raise NotFoundError(f"no job with id {prefix!r}")
        if len(ids) > 1:
            raise AmbiguousIdError(f"job id prefix {prefix!r} matches several jobs: give more characters")
        return ids[0]

    async def get_job(self, job_id: str, *, full: bool = True) -> Job:
        if not full:
            held = self.view.job(job_id)
            if held is not None:
                return held

        def tx(conn: sqlite3.Connection) -> Job:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job with id {job_id!r}")
            job = _row_to_job(row)
            rows = conn.execute(
                "SELECT * FROM executions WHERE job_id=? ORDER BY created_at", (job_id,)
            ).fetchall()
            job.executions = [_row_to_execution(r) for r in rows]
            if full:
                events = conn.execute("SELECT * FROM events WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
                job.events = [_row_to_event(e) for e in events]
            return job

        return await self._db.run(tx, reads=True)

    async def list_jobs(self, limit: int | None = 10, *, client_id: str | None = None,
                        oldest_first: bool = False) -> list[Job]:
        """Newest first (or oldest first); only `client_id`'s jobs if given."""
        def tx(conn: sqlite3.Connection) -> list[Job]:
            where, args = ("WHERE client_id=? ", [client_id]) if client_id is not None else ("", [])
            order = "ASC" if oldest_first else "DESC"
            sql = f"SELECT * FROM jobs {where}ORDER BY created_at {order}, rowid {order}"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            return [_row_to_job(r) for r in conn.execute(sql, args).fetchall()]

        return await self._db.run(tx, reads=True)

    async def jobs_in_states(self, states: list[JobState]) -> list[Job]:
        def tx(conn: sqlite3.Connection) -> list[Job]:
            marks = ",".join("?" * len(states))
            rows = conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at", [s.value for s in states]
            ).fetchall()
            return [_row_to_job(r) for r in rows]

        return await self._db.run(tx, reads=True)

    async def job_ids_in_states(self, states: list[JobState]) -> list[str]:
        def tx(conn: sqlite3.Connection) -> list[str]:
            marks = ",".join("?" * len(states))
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created_at", [s.value for s in states]
            ).fetchall()
            return [r["id"] for r in rows]

        return await self._db.run(tx, reads=True)

    async def live_executions_on(self, node_ids: set[str]) -> list[Execution]:
        """The unfinished executions of unfinished jobs held by these nodes."""
        def tx(conn: sqlite3.Connection) -> list[Execution]:
            ids, states, jobs = sorted(node_ids), _UNFINISHED_EXECUTION, _UNFINISHED_JOB
            rows = conn.execute(
                f"SELECT * FROM executions WHERE node_id IN ({','.join('?' * len(ids))})"
                f" AND state IN ({','.join('?' * len(states))}) AND job_id IN"
                f" (SELECT id FROM jobs WHERE state IN ({','.join('?' * len(jobs))})) ORDER BY created_at",
                [*ids, *states, *jobs]
            ).fetchall()
            return [ex for ex in map(_row_to_execution, rows) if not ex.state.terminal]

        return await self._db.run(tx, reads=True) if node_ids else []

    async def stalled_executions(self, states: list[ExecutionState], before: float) -> list[Execution]:
        """Executions of in-progress jobs in one of `states`, unchanged since `before`: one query (through the
        jobs_state and executions_job indexes), not one read per job in progress."""
        def tx(conn: sqlite3.Connection) -> list[Execution]:
            rows = conn.execute(
                f"SELECT e.* FROM jobs j JOIN executions e ON e.job_id = j.id WHERE j.state = ? AND e.state IN"
                f" ({','.join('?' * len(states))}) AND e.updated_at < ? ORDER BY e.updated_at",
                [JobState.IN_PROGRESS.value, *(s.value for s in states), before]
            ).fetchall()
            return [_row_to_execution(r) for r in rows]

        return await self._db.run(tx)

    async def update_job(self, job_id: str, expected: JobState | None, new: JobState, reason: str = "") -> None:
        await self._db.run(lambda conn: _move_job(conn, job_id, expected, new, reason),
                           on_commit=lambda now: self.view.job_moved(job_id, new, reason, now))

    async def create_execution(self, execution: Execution, reason: str = "", *, preapproved: bool = False) -> None:
        """`preapproved`: it is asked pre-approved (kept in its row, for a restarted requester: `preapproved`)."""
        held = _held(execution, reason)
        await self._db.run(lambda conn: _insert_execution(conn, execution, reason, preapproved),
                           on_commit=lambda _: self.view.execution_added(held))

    async def update_execution(
        self, execution_id: str, expected: ExecutionState | tuple[ExecutionState, ...] | None,
        new: ExecutionState, reason: str = "", *, result: RunResult | None = None, result_ref: str | None = None,
        job_to: tuple[JobState | None, JobState, str] | None = None,
        then: tuple[ExecutionState, str] | None = None,
        first: Sequence[tuple[ExecutionState, str, float]] = (),
        job_first: Sequence[tuple[JobState | None, JobState, str, float]] = (),
        at: float | None = None,
    ) -> Execution:
        """Compare-and-set an execution's state; with `job_to` (expected, new, reason), its job's too, in the
        same transaction (both or neither). `then` (state, reason): a second step taken at once, in the same
        transaction, both in the history (a pre-approved bid is accepted and its run started as one write).
        `first` (state, reason, time) and `job_first` (expected, new, reason, time): the execution's and the
        job's steps that happened before, at their times, written with the rest (a pre-approved bid taken when
        the ask's reply came, and the run's end that followed it at once: one write, not two in series). `at`:
        when `new`, `then` and `job_to` happened, if not now (a bid taken when the node's yes came)."""
        moved: list[float] = []
        moves = [*job_first, *([(*job_to, None)] if job_to is not None else [])]

        def tx(conn: sqlite3.Connection) -> Execution:
            row = conn.execute("SELECT * FROM executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution with id {execution_id!r}")
            current = ExecutionState(row["state"])
            allowed = (expected,) if isinstance(expected, ExecutionState) else expected
            if allowed is not None and current not in allowed:
                raise StateError(
                    f"execution {execution_id}: expected state {'/'.join(a.value for a in allowed)},"
                    f" found {current.value}"
                )
            step = current
            for state, _, _ in first:
                check_execution_transition(execution_id, step, state)
                step = state
            check_execution_transition(execution_id, step, new)
            if then is not None:
                check_execution_transition(execution_id, new, then[0])
            final, final_reason = then or (new, reason)
            sets = ["state=?", "reason=?", "updated_at=?"]
            args: list[object] = [final.value, final_reason, time.time()]
            if result is not None:
                sets.append("result=?")
                args.append(result.model_dump_json())
            if result_ref is not None:
                sets.append("result_ref=?")
                args.append(result_ref)
            conn.execute(f"UPDATE executions SET {', '.join(sets)} WHERE id=?", [*args, execution_id])
            for state, said, when in first:
                _event(conn, row["job_id"], "execution", execution_id, state.value, said, row["node_id"], at=when)
            # the history in the order things happened: the job's earlier steps before this one
            moved[:] = [_move_job(conn, row["job_id"], *move) for move in job_first]
            _event(conn, row["job_id"], "execution", execution_id, new.value, reason, row["node_id"], at=at)
            if then is not None:
                _event(conn, row["job_id"], "execution", execution_id, final.value, final_reason, row["node_id"],
                       at=at)
            if job_to is not None:
                moved.append(_move_job(conn, row["job_id"], *job_to, at=at))
            # what was read, with what was written: no second read. The view's copy is the row as committed
            # (its hooks run only while no transaction does), so a held one is not parsed again
            held = self.view.execution(execution_id)
            before = held if held is not None and held.state == current else _row_to_execution(row)
            return before.model_copy(update={"state": final, "reason": final_reason, "updated_at": args[2],
                                             **({"result": result} if result is not None else {}),
                                             **({"result_ref": result_ref} if result_ref is not None else {})})

        def on_commit(ex: Execution) -> None:
            self.view.execution_moved(ex)
            for move, when in zip(moves, moved, strict=False):
                self.view.job_moved(ex.job_id, move[1], move[2], when)

        return await self._db.run(tx, on_commit=on_commit)

    async def asked_the_old_way(self, execution_id: str) -> None:
        """An execution asked pre-approved is asked the old way after all (its node is of before that ask)."""
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE executions SET preapproved = 0 WHERE id=?", (execution_id,))

        await self._db.run(tx)

    async def preapproved(self) -> set[str]:
        """The unfinished executions of unfinished jobs that were asked pre-approved (read at a requester's start)."""
        def tx(conn: sqlite3.Connection) -> set[str]:
            jobs, states = _UNFINISHED_JOB, _UNFINISHED_EXECUTION
            rows = conn.execute(
                f"SELECT e.id FROM jobs j JOIN executions e ON e.job_id = j.id WHERE j.state IN"
                f" ({','.join('?' * len(jobs))}) AND e.preapproved = 1 AND e.state IN ({','.join('?' * len(states))})",
                [*jobs, *states]).fetchall()
            return {str(r["id"]) for r in rows}

        return await self._db.run(tx, reads=True)

    async def get_execution(self, execution_id: str) -> Execution:
        held = self.view.execution(execution_id)
        if held is not None:
            return held

        def tx(conn: sqlite3.Connection) -> Execution:
            row = conn.execute("SELECT * FROM executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution with id {execution_id!r}")
            return _row_to_execution(row)

        return await self._db.run(tx, reads=True)

    async def execution_holder(self, execution_id: str) -> tuple[str, str]:
        """(node id, job id) of an execution, read without parsing the rest: checked on every callback."""
        held = self.view.holder(execution_id)
        if held is not None:
            return held

        def tx(conn: sqlite3.Connection) -> tuple[str, str]:
            row = conn.execute("SELECT node_id, job_id FROM executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution with id {execution_id!r}")
            return str(row["node_id"]), str(row["job_id"])

        return await self._db.run(tx, reads=True)
