"""The compute node's execution store (SQLite): what it agreed to run, for whom, and how it went.

A row that does not parse never fails a read: it reads as a failed execution of a stand-in job. At start-up,
unfinished executions whose row does not parse are set aside (a copy in `quarantine`) and rewritten as
failed, and reported to their requester with the others a restart left unfinished.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from bacalhau.db import QUARANTINE, UNREADABLE_SPEC, Database, set_aside, why
from bacalhau.errors import NotFoundError, StateError
from bacalhau.models import ExecutionState, Job, JobSpec, RunResult
from bacalhau.models.state import check_execution_transition

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS local_executions (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, requester_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', result TEXT, result_ref TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS local_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL, time REAL NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT ''
);
"""
MIGRATIONS = [QUARANTINE]      # 0 -> 1: the quarantine table


@dataclass
class LocalExecution:
    id: str
    job: Job
    requester_id: str
    state: ExecutionState
    reason: str = ""
    result: RunResult | None = None
    result_ref: str = ""


def _parse(row: sqlite3.Row) -> LocalExecution:
    if not isinstance(row["id"], str) or not isinstance(row["requester_id"], str):
        raise ValueError("id and requester_id must be text")
    return LocalExecution(
        id=row["id"], job=Job.model_validate_json(row["job"]), requester_id=row["requester_id"],
        state=ExecutionState(row["state"]), reason=row["reason"],
        result=RunResult.model_validate_json(row["result"]) if row["result"] else None,
        result_ref=row["result_ref"],
    )


def _stand_in_job(raw: object) -> Job:
    """A job for an execution whose stored one does not parse: its id if that much can be read."""
    try:
        job_id = json.loads(raw)["id"]  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError):
        job_id = ""
    return Job.model_construct(id=str(job_id), spec=JobSpec.model_validate_json(UNREADABLE_SPEC))


def _ids_readable(ex: LocalExecution) -> bool:
    try:
        uuid.UUID(ex.id), uuid.UUID(ex.job.id)
    except (ValueError, TypeError, AttributeError):
        return False
    return bool(ex.requester_id)


def _row(row: sqlite3.Row) -> LocalExecution:
    try:
        return _parse(row)
    except (ValueError, TypeError) as exc:     # pydantic's ValidationError is a ValueError
        return LocalExecution(id=str(row["id"]), job=_stand_in_job(row["job"]), requester_id=str(row["requester_id"]),
                              state=ExecutionState.FAILED, reason=f"stored execution could not be read: {why(exc)}")


def _updated(ex: LocalExecution, new: ExecutionState, reason: str, result: RunResult | None,
             result_ref: str | None) -> LocalExecution:
    return replace(ex, state=new, reason=reason, result=result if result is not None else ex.result,
                   result_ref=result_ref if result_ref is not None else ex.result_ref)


MAX_REQUESTERS_KEPT = 100_000   # unfinished executions whose requester is known without a read


class ExecutionStore:
    def __init__(self, path: Path) -> None:
        self._db = Database(path, SCHEMA, MIGRATIONS)
        # execution id -> its requester, for unfinished executions: checked on every call a requester makes
        # (two reads of the database a job, each a worker-thread hop, before). An execution's requester is
        # written once, at create, and never changed while the node runs; the entry goes when it ends.
        self._requesters: dict[str, str] = {}

    def close(self) -> None:
        self._db.close()

    async def create(self, execution: LocalExecution, *, then: tuple[ExecutionState, str] | None = None) -> None:
        """StateError if the id is taken (an id is created once, by one requester). `then` (state, reason): a
        second step taken at once, in the same write, both in the history (a pre-approved bid whose run can
        start at once is accepted and started as one write)."""
        steps = [(execution.state, execution.reason)]
        if then is not None:
            check_execution_transition(execution.id, execution.state, then[0])
            steps.append(then)

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            try:
                conn.execute(
                    "INSERT INTO local_executions(id, job, requester_id, state, reason, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (execution.id, execution.job.model_dump_json(), execution.requester_id, steps[-1][0].value,
                     steps[-1][1], now, now),
                )
            except sqlite3.IntegrityError:
                raise StateError(f"execution {execution.id} exists already on this node") from None
            conn.executemany(
                "INSERT INTO local_events(execution_id, time, state, reason) VALUES (?,?,?,?)",
                [(execution.id, now, state.value, reason) for state, reason in steps],
            )

        await self._db.run(tx)
        if not execution.state.terminal:
            if len(self._requesters) >= MAX_REQUESTERS_KEPT:
                del self._requesters[next(iter(self._requesters))]   # the oldest: read from the database then
            self._requesters[execution.id] = execution.requester_id

    async def get(self, execution_id: str) -> LocalExecution:
        def tx(conn: sqlite3.Connection) -> LocalExecution:
            row = conn.execute("SELECT * FROM local_executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution {execution_id!r} on this node")
            return _row(row)

        return await self._db.run(tx, reads=True)

    async def requester_of(self, execution_id: str) -> str:
        """The requester that created an execution, read without parsing the rest: checked on every call."""
        known = self._requesters.get(execution_id)
        if known is not None:
            return known

        def tx(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT requester_id FROM local_executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution {execution_id!r} on this node")
            return str(row["requester_id"])

        return await self._db.run(tx, reads=True)

    async def update(
        self, execution_id: str, expected: tuple[ExecutionState, ...] | None, new: ExecutionState,
        reason: str = "", *, result: RunResult | None = None, result_ref: str | None = None,
    ) -> LocalExecution:
        def tx(conn: sqlite3.Connection) -> LocalExecution:
            row = conn.execute("SELECT * FROM local_executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution {execution_id!r} on this node")
            current = ExecutionState(row["state"])
            if expected is not None and current not in expected:
                raise StateError(f"execution {execution_id} is {current.value}")
            check_execution_transition(execution_id, current, new)
            now = time.time()
            conn.execute(
                "UPDATE local_executions SET state=?, reason=?, updated_at=?,"
                " result=COALESCE(?, result), result_ref=COALESCE(?, result_ref) WHERE id=?",
                (new.value, reason, now, result.model_dump_json() if result else None, result_ref, execution_id),
            )
            conn.execute(
                "INSERT INTO local_events(execution_id, time, state, reason) VALUES (?,?,?,?)",
                (execution_id, now, new.value, reason),
            )
            # what was read, with what was written: no second read and parse
            return _updated(_row(row), new, reason, result, result_ref)

        updated = await self._db.run(tx)
        if new.terminal:
            self._requesters.pop(execution_id, None)
        return updated

    async def record_result(self, execution_id: str, result: RunResult) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE local_executions SET result=?, updated_at=? WHERE id=?",
                         (result.model_dump_json(), time.time(), execution_id))

        await self._db.run(tx)

    async def finished_before(self, cutoff: float) -> list[str]:
        """Ids of executions that ended (a terminal state) and have not changed since `cutoff`."""
        def tx(conn: sqlite3.Connection) -> list[str]:
            terminal = [s.value for s in ExecutionState if s.terminal]
            rows = conn.execute(
                f"SELECT id FROM local_executions WHERE state IN ({','.join('?' * len(terminal))})"
                " AND updated_at < ?", [*terminal, cutoff]).fetchall()
            return [str(r["id"]) for r in rows]

        return await self._db.run(tx, reads=True)

    async def unfinished(self) -> list[LocalExecution]:
        def tx(conn: sqlite3.Connection) -> list[LocalExecution]:
            terminal = [s.value for s in ExecutionState if s.terminal]
            rows = conn.execute(f"SELECT * FROM local_executions WHERE state NOT IN ({','.join('?' * len(terminal))})",
                                terminal).fetchall()
            return [_row(r) for r in rows]

        return await self._db.run(tx, reads=True)

    def fail_unfinished_sync(self, reason: str) -> list[LocalExecution]:
        """At start-up: executions a previous run left unfinished cannot be resumed; mark them failed. One whose
        row does not parse is set aside first (kept in `quarantine`) and failed with that reason."""
        def tx(conn: sqlite3.Connection) -> list[LocalExecution]:
            terminal = [s.value for s in ExecutionState if s.terminal]
            marks = ",".join("?" * len(terminal))
            rows = conn.execute(
                f"SELECT rowid AS rid, * FROM local_executions WHERE state NOT IN ({marks})", terminal
            ).fetchall()
            now = time.time()
            failed = []
            for r in rows:
                try:
                    ex = _parse(r)
                    why_failed = reason
                except (ValueError, TypeError) as exc:
                    error = why(exc)
                    set_aside(conn, "local_executions", r, error)
                    log.warning("execution %s in compute.db could not be read (%s): failed, its row kept in the "
                                "quarantine table", r["id"], error)
                    why_failed = f"stored execution could not be read: {error} (its row is kept in the" \
                                 " quarantine table of compute.db)"
                    ex = LocalExecution(id=str(r["id"]), job=_stand_in_job(r["job"]),
                                        requester_id=str(r["requester_id"]), state=ExecutionState.FAILED)
                    conn.execute("UPDATE local_executions SET id=?, job=?, requester_id=?, result=NULL WHERE rowid=?",
                                 (ex.id, ex.job.model_dump_json(), ex.requester_id, r["rid"]))
                conn.execute(
                    "UPDATE local_executions SET state=?, reason=?, updated_at=? WHERE rowid=?",
                    (ExecutionState.FAILED.value, why_failed, now, r["rid"]),
                )
                conn.execute(
                    "INSERT INTO local_events(execution_id, time, state, reason) VALUES (?,?,?,?)",
                    (ex.id, now, ExecutionState.FAILED.value, why_failed),
                )
                ex.state, ex.reason = ExecutionState.FAILED, why_failed
                if why_failed == reason or _ids_readable(ex):
                    failed.append(ex)       # its requester is told (a row too damaged to name it is not)
            return failed

        return self._db.run_sync(tx)
