"""Amplify's durable state: runs, the state of each of their graph nodes, and lineage by CID, in one SQLite
file ($BACALHAU_DIR/amplify.db, bacalhau/db.py's versioned layout).

    runs         one a run: its CID, the workflow's YAML as it was when the run was submitted (a resumed run
                 follows the same graph), state, reason, times; `seq` orders the queue and the listing
    nodes        one per (run, graph node): state, attempt, the job in flight (re-attached after a restart),
                 output CID, the stdout a child's predicate tests (capped), reason
    products     what made a CID: run, node, job, spec hash, image, compute node (indexed by CID)
    derivations  input CID -> output CID edges (indexed both ways), so lineage up and down is two lookups
    memo         (layout 1) a step's recorded success by its spec hash (the spec holds the input CIDs and their
                 paths): the same step over the same CIDs is served from here, not run again
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bacalhau.db import Database
from bacalhau.errors import NotFoundError, StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, cid TEXT NOT NULL, workflow TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', outputs TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, started_at REAL, ended_at REAL, client_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, seq);
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL, node_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 0, job_id TEXT NOT NULL DEFAULT '', output_cid TEXT NOT NULL DEFAULT '',
    stdout TEXT NOT NULL DEFAULT '', started_at REAL, ended_at REAL, jobs TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, node_id)
);
CREATE TABLE IF NOT EXISTS products (
    cid TEXT NOT NULL, run_id TEXT NOT NULL, node_id TEXT NOT NULL, job_id TEXT NOT NULL, spec_hash TEXT NOT NULL,
    image TEXT NOT NULL, compute_node TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (cid, run_id, node_id)
);
CREATE TABLE IF NOT EXISTS derivations (
    input_cid TEXT NOT NULL, output_cid TEXT NOT NULL, run_id TEXT NOT NULL, node_id TEXT NOT NULL,
    PRIMARY KEY (input_cid, output_cid, run_id, node_id)
);
CREATE INDEX IF NOT EXISTS derivations_out ON derivations(output_cid);
"""
MIGRATIONS: list[str] = [
    # 1: memoisation. A run may refuse the cache; a node says whether its result came from it.
    """CREATE TABLE memo (
        spec_hash TEXT PRIMARY KEY, output_cid TEXT NOT NULL, stdout TEXT NOT NULL, job_id TEXT NOT NULL,
        image TEXT NOT NULL, compute_node TEXT NOT NULL, at REAL NOT NULL
    );
    ALTER TABLE runs ADD COLUMN no_cache INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX nodes_ended ON nodes(ended_at);
    CREATE INDEX runs_created ON runs(created_at)""",
]
MAX_STDOUT_KEPT = 64 * 1024        # of a node's stdout, what its children's predicates test
MAX_LIST = 100                     # a page of runs
T = TypeVar("T")


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class NodeState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (NodeState.QUEUED, NodeState.RUNNING)


@dataclass
class NodeRecord:
    node_id: str
    state: NodeState = NodeState.QUEUED
    reason: str = ""
    attempt: int = 0
    job_id: str = ""                 # the job in flight, or the last one run
    jobs: list[str] = field(default_factory=list)   # every job of every attempt
    output_cid: str = ""
    stdout: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    cached: bool = False             # its result is a recorded one of the same step (memo), no job was run

    def to_json(self) -> dict[str, Any]:
        return {"id": self.node_id, "state": self.state.value, "reason": self.reason, "attempt": self.attempt,
                "job_id": self.job_id, "jobs": self.jobs, "output_cid": self.output_cid, "cached": self.cached,
                "started_at": self.started_at, "ended_at": self.ended_at}


@dataclass
class RunRecord:
    id: str
    cid: str
    workflow: str
    state: RunState
    reason: str = ""
    outputs: list[str] = field(default_factory=list)
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    client_id: str = ""              # who submitted it (signing.py): its jobs are theirs, only they cancel it
    no_cache: bool = False           # every step runs, none is served from the memo


@dataclass(frozen=True)
class Memo:
    """A step's recorded success: what a run of the same spec gives without running it."""
    output_cid: str
    stdout: str
    job_id: str
    image: str
    compute_node: str


@dataclass(frozen=True)
class Product:
    cid: str
    run_id: str
    node_id: str
    job_id: str
    spec_hash: str
    image: str
    compute_node: str
    inputs: tuple[str, ...]


def _run(row: sqlite3.Row) -> RunRecord:
    state = row["state"]
    return RunRecord(id=row["id"], cid=row["cid"], workflow=row["workflow"],
                     state=RunState(state) if state in RunState.__members__.values() else RunState.FAILED,
                     reason=row["reason"], outputs=[o for o in row["outputs"].split(",") if o],
                     created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
                     client_id=row["client_id"], no_cache=bool(row["no_cache"]))


def _node(row: sqlite3.Row) -> NodeRecord:
    state = row["state"]
    return NodeRecord(node_id=row["node_id"],
                      state=NodeState(state) if state in NodeState.__members__.values() else NodeState.FAILED,
                      reason=row["reason"], attempt=row["attempt"], job_id=row["job_id"],
                      jobs=[j for j in row["jobs"].split(",") if j], output_cid=row["output_cid"],
                      stdout=row["stdout"], started_at=row["started_at"], ended_at=row["ended_at"],
                      cached=bool(row["cached"]))


class AmplifyStore:
    def __init__(self, path: Path) -> None:
        self._db = Database(path, SCHEMA, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    async def create_run(self, run_id: str, cid: str, workflow: str, node_ids: list[str],
                         max_waiting: int, client_id: str = "", no_cache: bool = False) -> tuple[RunRecord, bool]:
        """The run (created queued with its nodes, or the one that has this id already) and whether it is new.
        QueueFull when `max_waiting` runs wait already."""
        def tx(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is not None:
                run = _run(row)
                if run.cid != cid:
                    raise StateError(f"run {run_id} exists already, for another CID ({run.cid})")
                if run.client_id != client_id:
                    raise StateError(f"run {run_id} exists already, submitted by another client")
                return run, False
            waiting = conn.execute("SELECT COUNT(*) FROM runs WHERE state=?", (RunState.QUEUED.value,)).fetchone()[0]
            if waiting >= max_waiting:
                raise QueueFull(f"the amplify queue is full ({waiting} runs wait; serve --amplify-max-waiting "
                                f"is {max_waiting}): try again when some have started")
            now = time.time()
            conn.execute("INSERT INTO runs(id, cid, workflow, state, created_at, client_id, no_cache)"
                         " VALUES (?,?,?,?,?,?,?)",
                         (run_id, cid, workflow, RunState.QUEUED.value, now, client_id, int(no_cache)))
            conn.executemany("INSERT INTO nodes(run_id, node_id, state) VALUES (?,?,?)",
                             [(run_id, n, NodeState.QUEUED.value) for n in node_ids])
            return _run(conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()), True

        return await self._db.run(tx)

    async def get_run(self, run_id: str) -> RunRecord:
        def tx(conn: sqlite3.Connection) -> RunRecord:
            row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no amplify run {run_id}")
            run = _run(row)
            for n in conn.execute("SELECT * FROM nodes WHERE run_id=?", (run_id,)):
                run.nodes[n["node_id"]] = _node(n)
            return run

        return await self._db.run(tx)

    async def list_runs(self, limit: int, offset: int) -> tuple[list[RunRecord], int]:
        """A page of runs, newest first, and how many there are."""
        def tx(conn: sqlite3.Connection) -> tuple[list[RunRecord], int]:
            total = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            rows = conn.execute("SELECT * FROM runs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            runs = [_run(r) for r in rows]
            for run in runs:    # node states, for each run's progress (a page is at most MAX_LIST runs)
                for n in conn.execute("SELECT * FROM nodes WHERE run_id=?", (run.id,)):
                    run.nodes[n["node_id"]] = _node(n)
            return runs, total

        return await self._db.run(tx)

    async def unfinished(self) -> list[RunRecord]:
        """Runs to resume at start (running first, then queued, each oldest first)."""
        def tx(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute("SELECT * FROM runs WHERE state IN (?,?) ORDER BY state='queued', seq",
                                (RunState.RUNNING.value, RunState.QUEUED.value)).fetchall()
            return [_run(r) for r in rows]

        return await self._db.run(tx)

    async def set_run(self, run_id: str, expected: tuple[RunState, ...], state: RunState, reason: str = "",
                      outputs: list[str] | None = None) -> bool:
        """Compare-and-set: False when the run was not in one of `expected` (e.g. cancelled meanwhile)."""
        def tx(conn: sqlite3.Connection) -> bool:
            now = time.time()
            marks = ",".join("?" * len(expected))
            cur = conn.execute(
                f"UPDATE runs SET state=?, reason=?, outputs=COALESCE(?, outputs),"
                f" started_at=CASE WHEN ?='running' THEN ? ELSE started_at END,"
                f" ended_at=CASE WHEN ? IN ('succeeded','failed','cancelled') THEN ? ELSE ended_at END"
                f" WHERE id=? AND state IN ({marks})",
                (state.value, reason, ",".join(outputs) if outputs is not None else None, state.value, now,
                 state.value, now, run_id, *(s.value for s in expected)))
            return cur.rowcount == 1

        return await self._db.run(tx)

    async def set_node(self, run_id: str, node_id: str, state: NodeState, *, reason: str = "",
                       attempt: int | None = None, job_id: str | None = None, output_cid: str | None = None,
                       stdout: str | None = None, cached: bool = False) -> bool:
        """Set a node's state unless it ended already (a cancelled node stays cancelled); a new job id is
        appended to its jobs. False when the node had ended."""
        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT state, jobs FROM nodes WHERE run_id=? AND node_id=?",
                               (run_id, node_id)).fetchone()
            if row is None or NodeState(row["state"]).terminal:
                return False
            now = time.time()
            jobs = row["jobs"]
            if job_id and job_id not in jobs.split(","):
                jobs = f"{jobs},{job_id}" if jobs else job_id
            conn.execute(
                "UPDATE nodes SET state=?, reason=?, attempt=COALESCE(?, attempt), job_id=COALESCE(?, job_id),"
                " output_cid=COALESCE(?, output_cid), stdout=COALESCE(?, stdout), jobs=?, cached=?,"
                " started_at=COALESCE(started_at, CASE WHEN ?='running' THEN ? END),"
                " ended_at=CASE WHEN ? NOT IN ('queued','running') THEN ? ELSE ended_at END"
                " WHERE run_id=? AND node_id=?",
                (state.value, reason, attempt, job_id, output_cid,
                 stdout[:MAX_STDOUT_KEPT] if stdout is not None else None, jobs, int(cached), state.value, now,
                 state.value,
                 now, run_id, node_id))
            return True

        return await self._db.run(tx)

    async def cancel_run(self, run_id: str, reason: str) -> list[str]:
        """Mark the run and its unfinished nodes cancelled; the ids of the jobs they had in flight."""
        def tx(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute("SELECT state FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no amplify run {run_id}")
            if RunState(row["state"]).terminal:
                raise StateError(f"run {run_id} is already {row['state']}")
            now = time.time()
            jobs = [r["job_id"] for r in conn.execute(
                "SELECT job_id FROM nodes WHERE run_id=? AND state=? AND job_id!=''",
                (run_id, NodeState.RUNNING.value))]
            conn.execute("UPDATE nodes SET state=?, reason=?, ended_at=? WHERE run_id=? AND state IN (?,?)",
                         (NodeState.CANCELLED.value, reason, now, run_id, NodeState.QUEUED.value,
                          NodeState.RUNNING.value))
            conn.execute("UPDATE runs SET state=?, reason=?, ended_at=? WHERE id=?",
                         (RunState.CANCELLED.value, reason, now, run_id))
            return jobs

        return await self._db.run(tx)

    async def record_product(self, product: Product) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO products VALUES (?,?,?,?,?,?,?,?)",
                         (product.cid, product.run_id, product.node_id, product.job_id, product.spec_hash,
                          product.image, product.compute_node, time.time()))
            conn.executemany("INSERT OR IGNORE INTO derivations VALUES (?,?,?,?)",
                             [(i, product.cid, product.run_id, product.node_id) for i in product.inputs
                              if i != product.cid])

        await self._db.run(tx)

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of its own (analytics.py's), in the store's worker thread."""
        return await self._db.run(fn, reads=True)

    async def remember(self, spec_hash: str, memo: Memo) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO memo VALUES (?,?,?,?,?,?,?)",
                         (spec_hash, memo.output_cid, memo.stdout[:MAX_STDOUT_KEPT], memo.job_id, memo.image,
                          memo.compute_node, time.time()))

        await self._db.run(tx)

    async def recall(self, spec_hash: str) -> Memo | None:
        def tx(conn: sqlite3.Connection) -> Memo | None:
            row = conn.execute("SELECT * FROM memo WHERE spec_hash=?", (spec_hash,)).fetchone()
            if row is None:
                return None
            return Memo(row["output_cid"], row["stdout"], row["job_id"], row["image"], row["compute_node"])

        return await self._db.run(tx, reads=True)

    async def lineage(self, cid: str, direction: str, depth: int, max_items: int) -> dict[str, Any]:
        """What made `cid` (up) and what was made from it (down), `depth` steps each way, breadth first with a
        visited set; each step is an indexed lookup."""
        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            out: dict[str, Any] = {"cid": cid, "produced_by": _products(conn, cid)}
            for way in ("up", "down"):
                if direction not in (way, "both"):
                    continue
                edges: list[dict[str, Any]] = []
                frontier, seen = [cid], {cid}
                for level in range(1, depth + 1):
                    nxt: list[str] = []
                    for c in frontier:
                        sql = ("SELECT * FROM derivations WHERE output_cid=?" if way == "up"
                               else "SELECT * FROM derivations WHERE input_cid=?")
                        for r in conn.execute(sql + " LIMIT ?", (c, max_items)):
                            other = r["input_cid"] if way == "up" else r["output_cid"]
                            if len(edges) >= max_items:
                                break
                            edges.append({"input": r["input_cid"], "output": r["output_cid"], "run_id": r["run_id"],
                                          "node_id": r["node_id"], "depth": level,
                                          "produced_by": _products(conn, r["output_cid"])})
                            if other not in seen:
                                seen.add(other)
                                nxt.append(other)
                    frontier = nxt
                    if not frontier:
                        break
                out[way] = edges
            return out

        return await self._db.run(tx)


def _products(conn: sqlite3.Connection, cid: str) -> list[dict[str, Any]]:
    # `image` is the name the spec gave: no execution reports the digest it ran (RunResult has none), so
    # image_digest stays empty until one does, and `image_is` says which of the two `image` is
    return [{"run_id": r["run_id"], "node_id": r["node_id"], "job_id": r["job_id"], "spec_hash": r["spec_hash"],
             "image": r["image"], "image_digest": "", "image_is": "name", "compute_node": r["compute_node"],
             "at": r["at"]}
            for r in conn.execute("SELECT * FROM products WHERE cid=? LIMIT 20", (cid,))]


class QueueFull(StateError):
    """Too many runs wait: the API answers 429."""
