"""The compute node's execution store (SQLite): what it agreed to run, for whom, and how it went."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bacalhau.db import Database
from bacalhau.errors import NotFoundError, StateError
from bacalhau.models import ExecutionState, Job, RunResult
from bacalhau.models.state import check_execution_transition

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


@dataclass
class LocalExecution:
    id: str
    job: Job
    requester_id: str
    state: ExecutionState
    reason: str = ""
    result: RunResult | None = None
    result_ref: str = ""


def _row(row: sqlite3.Row) -> LocalExecution:
    return LocalExecution(
        id=row["id"], job=Job.model_validate_json(row["job"]), requester_id=row["requester_id"],
        state=ExecutionState(row["state"]), reason=row["reason"],
        result=RunResult.model_validate_json(row["result"]) if row["result"] else None,
        result_ref=row["result_ref"],
    )


class ExecutionStore:
    def __init__(self, path: Path) -> None:
        self._db = Database(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    async def create(self, execution: LocalExecution) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO local_executions(id, job, requester_id, state, reason, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (execution.id, execution.job.model_dump_json(), execution.requester_id, execution.state.value,
                 execution.reason, now, now),
            )
            conn.execute(
                "INSERT INTO local_events(execution_id, time, state, reason) VALUES (?,?,?,?)",
                (execution.id, now, execution.state.value, execution.reason),
            )

        await self._db.run(tx)

    async def get(self, execution_id: str) -> LocalExecution:
        def tx(conn: sqlite3.Connection) -> LocalExecution:
            row = conn.execute("SELECT * FROM local_executions WHERE id=?", (execution_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no execution {execution_id!r} on this node")
            return _row(row)

        return await self._db.run(tx)

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
            return _row(conn.execute("SELECT * FROM local_executions WHERE id=?", (execution_id,)).fetchone())

        return await self._db.run(tx)

    async def record_result(self, execution_id: str, result: RunResult) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE local_executions SET result=?, updated_at=? WHERE id=?",
                         (result.model_dump_json(), time.time(), execution_id))

        await self._db.run(tx)

    def fail_unfinished_sync(self, reason: str) -> list[LocalExecution]:
        """At start-up: executions a previous run left unfinished cannot be resumed; mark them failed."""
        def tx(conn: sqlite3.Connection) -> list[LocalExecution]:
            terminal = [s.value for s in ExecutionState if s.terminal]
            marks = ",".join("?" * len(terminal))
            rows = conn.execute(
                f"SELECT * FROM local_executions WHERE state NOT IN ({marks})", terminal
            ).fetchall()
            now = time.time()
            for r in rows:
                conn.execute(
                    "UPDATE local_executions SET state=?, reason=?, updated_at=? WHERE id=?",
                    (ExecutionState.FAILED.value, reason, now, r["id"]),
                )
                conn.execute(
                    "INSERT INTO local_events(execution_id, time, state, reason) VALUES (?,?,?,?)",
                    (r["id"], now, ExecutionState.FAILED.value, reason),
                )
            return [_row(r) for r in rows]

        return self._db.run_sync(tx)
