"""The dashboard's aggregation, in SQLite: every figure the page shows is kept up to date as events arrive.

One row per job (`jobs`) is what makes events idempotent: an event changes it only if it is news (a job not
seen, a terminal state not yet known, or a later snapshot of an unfinished job), and only a change of the row
moves the counts. So a snapshot arriving twice, late, out of order, or replayed by a requester that restarted
or by a late joiner's sync counts once. Counts are kept at write time: per minute/hour/day buckets (integer
UTC starts, so they sort in time order), per dimension (engine, image, state, node, label, failure reason,
client), a duration histogram per engine (bins a quarter of a power of two wide, for p50/p95), and totals.
No read scans the history: each is an index range or a small table.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bacalhau.dashboard.events import JobEvent
from bacalhau.db import Database
from bacalhau.models import ExecutionState, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, state TEXT NOT NULL, engine TEXT NOT NULL,
    image TEXT NOT NULL, client TEXT NOT NULL, labels TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, reason TEXT NOT NULL, result_cid TEXT NOT NULL, executions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_requester ON jobs(requester, updated_at);
CREATE TABLE IF NOT EXISTS buckets (
    unit TEXT NOT NULL, start INTEGER NOT NULL, jobs INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (unit, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    dim TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (dim, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counts_top ON counts(dim, n);
CREATE TABLE IF NOT EXISTS durations (
    engine TEXT NOT NULL, bin INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (engine, bin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
"""
MIGRATIONS: tuple[str, ...] = ()      # layout version 0 is SCHEMA; migrations[i] takes version i to i + 1

UNITS = {"minute": 60, "hour": 3600, "day": 86400}
SPANS = {"minute": 120, "hour": 72, "day": 90}     # buckets a time series shows, back from now
DIMENSIONS = ("engine", "image", "state", "node", "label", "reason", "client")
TOP = 12                     # rows a breakdown shows (the rest summed as "other")
LATEST = 25
BINS_PER_DOUBLING = 4
MIN_DURATION = 0.001


def duration_bin(seconds: float) -> int:
    return round(BINS_PER_DOUBLING * math.log2(max(seconds, MIN_DURATION) / MIN_DURATION))


def bin_seconds(b: int) -> float:
    return float(MIN_DURATION * 2 ** (b / BINS_PER_DOUBLING))


def _rank(state: str) -> int:
    return 2 if JobState(state).terminal else 1


class DashboardStore:
    def __init__(self, path: Path) -> None:
        # not durable: the figures can be rebuilt from the requesters (a sync), a power cut may lose the last few
        self._db = Database(path, SCHEMA, MIGRATIONS, durable=False)
        self.version = 0      # moves at every change that moved a count: live views compare it

    def close(self) -> None:
        self._db.close()

    # -- writes ---------------------------------------------------------------------------------------------

    async def ingest(self, events: Iterable[JobEvent]) -> int:
        """Take events in one transaction; how many changed something."""
        batch = list(events)
        changed = await self._db.run(lambda conn: sum(_apply(conn, e) for e in batch))
        if changed:
            self.version += 1
        return changed

    # -- reads ----------------------------------------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        return await self._db.run(_summary)

    async def timeseries(self, unit: str, now: float) -> list[dict[str, Any]]:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit[:20]!r}")
        return await self._db.run(lambda conn: _timeseries(conn, unit, now))

    async def breakdowns(self) -> dict[str, list[dict[str, Any]]]:
        return await self._db.run(_breakdowns)

    async def durations(self) -> dict[str, dict[str, float]]:
        return await self._db.run(_durations)

    async def latest(self, limit: int = LATEST) -> list[dict[str, Any]]:
        return await self._db.run(lambda conn: _latest(conn, max(1, min(limit, 200))))

    async def job(self, job_id: str) -> dict[str, Any] | None:
        return await self._db.run(lambda conn: _job(conn, job_id))

    async def jobs_of(self, requester: str, since: float, limit: int) -> list[dict[str, Any]]:
        """A requester's jobs updated after `since`, the latest first."""
        return await self._db.run(lambda conn: [_row(r) for r in conn.execute(
            "SELECT * FROM jobs WHERE requester=? AND updated_at>? ORDER BY updated_at DESC LIMIT ?",
            (requester, since, limit))])

    async def snapshot(self, now: float) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            return {"summary": _summary(conn), "breakdowns": _breakdowns(conn), "durations": _durations(conn),
                    "latest": _latest(conn, LATEST),
                    "timeseries": {u: _timeseries(conn, u, now) for u in UNITS}}
        return await self._db.run(read)


def _bump(conn: sqlite3.Connection, dim: str, key: str, by: int = 1) -> bool:
    """Move a count; True when the key is new."""
    cur = conn.execute("UPDATE counts SET n = n + ? WHERE dim=? AND key=?", (by, dim, key))
    if cur.rowcount == 0:
        conn.execute("INSERT INTO counts(dim, key, n) VALUES (?,?,?)", (dim, key, by))
        return True
    return False


def _total(conn: sqlite3.Connection, key: str, by: int = 1) -> None:
    conn.execute("INSERT INTO totals(key, n) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET n = n + excluded.n",
                 (key, by))


def _bucket(conn: sqlite3.Connection, at: float, column: str) -> None:
    for unit, width in UNITS.items():
        start = int(at // width) * width
        conn.execute(f"INSERT INTO buckets(unit, start, {column}) VALUES (?,?,1) "
                     f"ON CONFLICT(unit, start) DO UPDATE SET {column} = {column} + 1", (unit, start))


def _apply(conn: sqlite3.Connection, e: JobEvent) -> bool:
    row = conn.execute("SELECT requester, state, updated_at FROM jobs WHERE id=?", (e.job_id,)).fetchone()
    old: str | None = None
    if row is not None:
        if row["requester"] != e.requester:
            return False            # a job is its requester's: another cannot speak for it
        old = row["state"]
        if _rank(old) == 2 or (e.updated_at <= row["updated_at"] and _rank(e.state.value) <= _rank(old)):
            return False            # a terminal state is final; an older or repeated snapshot is no news
    values = (e.requester, e.state.value, e.engine.value, e.image, e.client, json.dumps(e.labels), e.created_at,
              e.updated_at, e.reason, e.result_cid, json.dumps([x.model_dump(mode="json") for x in e.executions]))
    if old is None:
        conn.execute("INSERT INTO jobs(requester, state, engine, image, client, labels, created_at, updated_at, "
                     "reason, result_cid, executions, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (*values, e.job_id))
        _total(conn, "jobs")
        _bucket(conn, e.created_at, "jobs")
        _bump(conn, "engine", e.engine.value)
        _bump(conn, "image", e.image or e.engine.value)
        for k, v in e.labels.items():
            _bump(conn, "label", f"{k}={v}")
        if e.client and _bump(conn, "client", e.client):
            _total(conn, "clients")
    else:
        conn.execute("UPDATE jobs SET requester=?, state=?, engine=?, image=?, client=?, labels=?, created_at=?, "
                     "updated_at=?, reason=?, result_cid=?, executions=? WHERE id=?", (*values, e.job_id))
        if old == e.state.value:
            return True             # a later snapshot (executions moved): the row is news, no count moves
        _bump(conn, "state", old, -1)
    _bump(conn, "state", e.state.value)
    if e.state.terminal:
        _total(conn, e.state.value)
        _bucket(conn, e.updated_at, e.state.value)
        if e.state == JobState.FAILED:
            _bump(conn, "reason", " ".join(e.reason.split())[:120] or "(no reason)")
        if e.state == JobState.COMPLETED:
            dbin = duration_bin(e.updated_at - e.created_at)
            conn.execute("INSERT INTO durations(engine, bin, n) VALUES (?,?,1) "
                         "ON CONFLICT(engine, bin) DO UPDATE SET n = n + 1", (e.engine.value, dbin))
        ran = {x.node_id for x in e.executions if x.state != ExecutionState.BID_REJECTED}
        for node in sorted(ran):
            _bump(conn, "node", node)
    return True


def _summary(conn: sqlite3.Connection) -> dict[str, Any]:
    totals = {r["key"]: r["n"] for r in conn.execute("SELECT key, n FROM totals")}
    states = {r["key"]: r["n"] for r in conn.execute("SELECT key, n FROM counts WHERE dim='state'")}
    return {"jobs": totals.get("jobs", 0), "running": states.get(JobState.IN_PROGRESS.value, 0),
            "pending": states.get(JobState.PENDING.value, 0), "completed": totals.get("completed", 0),
            "failed": totals.get("failed", 0), "cancelled": totals.get("cancelled", 0),
            "clients": totals.get("clients", 0)}


def _iso(start: int, unit: str) -> str:
    t = datetime.fromtimestamp(start, UTC)
    return t.strftime({"minute": "%Y-%m-%dT%H:%MZ", "hour": "%Y-%m-%dT%H:00Z", "day": "%Y-%m-%d"}[unit])


def _timeseries(conn: sqlite3.Connection, unit: str, now: float) -> list[dict[str, Any]]:
    """The buckets from the first with jobs in the span to the current one; those without any as zeros (a
    chart's x axis is time)."""
    width = UNITS[unit]
    current = int(now // width) * width
    since = current - (SPANS[unit] - 1) * width
    rows = {r["start"]: r for r in conn.execute(
        "SELECT start, jobs, completed, failed, cancelled FROM buckets WHERE unit=? AND start>=? AND start<=?",
        (unit, since, current))}
    if not rows:
        return []
    out = []
    for start in range(min(rows), current + 1, width):
        r = rows.get(start)
        out.append({"start": start, "label": _iso(start, unit), "jobs": r["jobs"] if r else 0,
                    "completed": r["completed"] if r else 0, "failed": r["failed"] if r else 0,
                    "cancelled": r["cancelled"] if r else 0})
    return out


def _breakdowns(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for dim in DIMENSIONS:
        if dim == "client":
            continue        # who the clients are is not shown, only how many
        rows = conn.execute("SELECT key, n FROM counts WHERE dim=? AND n>0 ORDER BY n DESC, key LIMIT ?",
                            (dim, TOP)).fetchall()
        out[dim] = [{"key": r["key"], "count": r["n"]} for r in rows]
    return out


def _durations(conn: sqlite3.Connection) -> dict[str, dict[str, float]]:
    hist: dict[str, list[tuple[int, int]]] = {}
    for r in conn.execute("SELECT engine, bin, n FROM durations ORDER BY engine, bin"):
        hist.setdefault(r["engine"], []).append((r["bin"], r["n"]))
    out = {}
    for engine, bins in hist.items():
        total = sum(n for _, n in bins)
        out[engine] = {"count": total, "p50": _quantile(bins, total, 0.50), "p95": _quantile(bins, total, 0.95)}
    return out


def _quantile(bins: list[tuple[int, int]], total: int, q: float) -> float:
    seen = 0
    for b, n in bins:
        seen += n
        if seen >= q * total:
            return round(bin_seconds(b), 3)
    return round(bin_seconds(bins[-1][0]), 3)


def _row(r: sqlite3.Row) -> dict[str, Any]:
    return {"id": r["id"], "requester": r["requester"], "state": r["state"], "engine": r["engine"],
            "image": r["image"], "labels": json.loads(r["labels"]), "created_at": r["created_at"],
            "updated_at": r["updated_at"], "reason": r["reason"], "result_cid": r["result_cid"],
            "executions": json.loads(r["executions"]), "client": r["client"]}


def _latest(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
    out = []
    for r in rows:
        row = _row(r)
        del row["client"]
        out.append(row)
    return out


def _job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    r = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if r is None:
        return None
    row = _row(r)
    del row["client"]
    return row
