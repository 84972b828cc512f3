"""The dashboard's aggregation, in SQLite: every figure the page shows is kept up to date as events arrive.

One row per job (`jobs`) is what makes events idempotent: an event changes it only if it is news (a job not
seen, a terminal state not yet known, or a later snapshot of an unfinished job), and only a change of the row
moves the counts. So a snapshot arriving twice, late, out of order, or replayed by a requester that restarted
or by a late joiner's sync counts once. Counts are kept at write time: per minute/hour/day buckets (integer
UTC starts, so they sort in time order), per dimension (engine, image, state, node, label, failure reason,
client), a duration histogram per engine (bins a quarter of a power of two wide, for p50/p95), and totals.
No read scans the history: each is an index range or a small table.

A late joiner takes each requester's own aggregates (`totals_of` answers, `apply_totals` takes): the figures
of its jobs that ended up to a mark, in place of what this node had counted of them. Rows those figures hold
are `covered` (listed, never counted again), and an event of that requester's under its mark counts nothing:
a job counts once whether it came as a figure, in detail or by gossip. Building an answer reads the requester's
ended jobs since the asker's mark (the whole history at a first ask: 626 ms for 30,000 jobs).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bacalhau.dashboard.events import (
    MAX_AGG_BINS,
    MAX_AGG_BUCKETS,
    MAX_AGG_KEYS,
    Aggregate,
    JobEvent,
    TotalsReply,
)
from bacalhau.db import Database
from bacalhau.models import Engine, ExecutionState, JobState

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
# layout version 0 is SCHEMA; migrations[i] takes version i to i + 1.
# 1: a late joiner takes each requester's aggregates up to a mark (`marks`); a job row those figures already
#    hold is `covered` (kept for the lists, counted by the aggregate, never again by its events)
MIGRATIONS: tuple[str, ...] = (
    "ALTER TABLE jobs ADD COLUMN covered INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE IF NOT EXISTS marks (requester TEXT PRIMARY KEY, upto REAL NOT NULL) WITHOUT ROWID",
)

UNITS = {"minute": 60, "hour": 3600, "day": 86400}
SPANS = {"minute": 120, "hour": 72, "day": 90}     # buckets a time series shows, back from now
DIMENSIONS = ("engine", "image", "state", "node", "label", "reason", "client")
TOP = 12                     # rows a breakdown shows (the rest summed as "other")
LATEST = 25
BINS_PER_DOUBLING = 4
MIN_DURATION = 0.001
SYNC_MARGIN = 60.0           # a requester's aggregate stops this far back (what ends later comes in detail)


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

        def take(conn: sqlite3.Connection) -> int:
            marks = {r: _mark(conn, r) for r in {e.requester for e in batch}}
            return _apply_all(conn, batch, lambda e: marks[e.requester])
        changed = await self._db.run(take)
        if changed:
            self.version += 1
        return changed

    async def mark_of(self, requester: str) -> float:
        """Up to when (its clock) a requester's ended jobs are counted by its aggregates."""
        return await self._db.run(lambda conn: _mark(conn, requester))

    async def apply_totals(self, requester: str, reply: TotalsReply) -> int:
        """A requester's answer to a catch-up (checked by the caller), in one transaction: the figures of its
        jobs that ended up to the mark are taken from its aggregate in place of what this node had counted of
        them (a job counts once, whichever way it came), the mark moves, and its recent jobs are taken."""
        agg = reply.aggregate

        def apply(conn: sqlite3.Connection) -> int:
            if _mark(conn, requester) != agg.since:
                return 0        # another answer moved the mark meanwhile: this one is stale
            # listed and not under the mark (those under it are counted by the aggregate)
            shown = {e.job_id for e in reply.events if not (e.state.terminal and e.updated_at <= agg.upto)}
            ended = tuple(s.value for s in JobState if s.terminal)
            rows = conn.execute(
                "SELECT * FROM jobs WHERE requester=? AND covered=0 AND updated_at<=? "
                f"AND state IN ({','.join('?' * len(ended))})", (requester, agg.upto, *ended)).fetchall()
            if reply.complete:     # an unfinished job it does not list has ended, up to the mark
                rows += [r for r in conn.execute(
                    f"SELECT * FROM jobs WHERE requester=? AND covered=0 AND state NOT IN "
                    f"({','.join('?' * len(ended))})", (requester, *ended)) if r["id"] not in shown]
            mine = _Sum()
            for r in rows:
                mine.add(r)
            _write_sum(conn, mine, -1)
            conn.executemany("UPDATE jobs SET covered=1 WHERE id=?", [(r["id"],) for r in rows])
            _write_sum(conn, _Sum.of(agg), 1)
            conn.execute("INSERT INTO marks(requester, upto) VALUES (?,?) ON CONFLICT(requester) "
                         "DO UPDATE SET upto=excluded.upto", (requester, agg.upto))
            return 1 + _apply_all(conn, reply.events, lambda e: agg.upto if e.state.terminal else None)
        changed = await self._db.run(apply)
        if changed:
            self.version += 1
        return changed

    async def totals_of(self, requester: str, since: float, limit: int, now: float,
                        max_bytes: int) -> TotalsReply:
        """This requester's answer: the aggregates of its jobs that ended in (since, mark], the mark at least
        SYNC_MARGIN back, and in detail its newest `limit` ended jobs and its unfinished ones (as many as
        `max_bytes` hold); an ended job not listed is always under the mark."""
        ended = tuple(s.value for s in JobState if s.terminal)
        marks = ",".join("?" * len(ended))

        def read(conn: sqlite3.Connection) -> TotalsReply:
            events: list[JobEvent] = []
            size = 0
            complete = True
            for r in conn.execute(f"SELECT * FROM jobs WHERE requester=? AND state NOT IN ({marks}) "
                                  "ORDER BY updated_at DESC LIMIT ?", (requester, *ended, limit + 1)):
                event = _event(r)
                size += len(event.model_dump_json())
                if size > max_bytes // 2 or len(events) >= limit:
                    complete = False
                    break
                events.append(event)
            upto = max(since, min(now, now - SYNC_MARGIN))
            listed = 0
            for r in conn.execute(f"SELECT * FROM jobs WHERE requester=? AND state IN ({marks}) "
                                  "ORDER BY updated_at DESC LIMIT ?", (requester, *ended, limit + 1)):
                event = _event(r)
                size += len(event.model_dump_json())
                if size > max_bytes or listed >= limit or r["updated_at"] <= since:
                    upto = max(upto, min(now, r["updated_at"]))     # those not listed are under the mark
                    break
                events.append(event)
                listed += 1
            total = _Sum()
            for r in conn.execute(f"SELECT * FROM jobs WHERE requester=? AND updated_at>? AND updated_at<=? "
                                  f"AND state IN ({marks})", (requester, since, upto, *ended)):
                total.add(r)
            return TotalsReply(aggregate=total.aggregate(since, upto, now), events=events, complete=complete,
                               now=now)
        return await self._db.run(read)

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


def _mark(conn: sqlite3.Connection, requester: str) -> float:
    row = conn.execute("SELECT upto FROM marks WHERE requester=?", (requester,)).fetchone()
    return float(row["upto"]) if row else 0.0


def _apply_all(conn: sqlite3.Connection, events: Iterable[JobEvent], mark: Callable[[JobEvent], float | None]) -> int:
    """Take events (each with its requester's `mark`); how many changed something. Each figure they move is
    written once, summed (a job's pending and then completed nets its pending out): ~20 statements a job were
    the most any database of a node ran (issue 14)."""
    moved = _Sum()
    changed = sum(_apply(conn, e, moved, mark(e)) for e in events)
    _write_sum(conn, moved, 1)
    return changed


def _apply(conn: sqlite3.Connection, e: JobEvent, moved: _Sum, mark: float | None) -> bool:
    """Take one event: its job's row now, what it moves in the figures added to `moved` (written by the caller,
    once for a batch). `mark` is its requester's (None: none applies)."""
    row = conn.execute("SELECT * FROM jobs WHERE id=?", (e.job_id,)).fetchone()
    old: str | None = None
    if row is None and mark is not None and e.updated_at <= mark:
        if not e.state.terminal:
            return False            # an old snapshot of a job that has ended under the mark, or will be listed
        _insert(conn, e, covered=1)     # its requester's aggregate counted it: listed, not counted again
        return True
    if row is not None:
        if row["requester"] != e.requester:
            return False            # a job is its requester's: another cannot speak for it
        old = row["state"]
        if _rank(old) == 2 or (e.updated_at <= row["updated_at"] and _rank(e.state.value) <= _rank(old)):
            return False            # a terminal state is final; an older or repeated snapshot is no news
    values = (e.requester, e.state.value, e.engine.value, e.image, e.client, json.dumps(e.labels), e.created_at,
              e.updated_at, e.reason, e.result_cid, json.dumps([x.model_dump(mode="json") for x in e.executions]))
    if row is not None and (first := (row["engine"], row["image"], row["client"], row["labels"],
                                      row["created_at"])) != values[2:7]:
        # what a job is stays what its first snapshot said: the figures hold that, and taking the row's back
        # (a catch-up) must take back what was counted, not another client's, label's or minute's
        e = e.model_copy(update={"engine": Engine(first[0]), "image": first[1], "client": first[2],
                                 "labels": json.loads(first[3]), "created_at": first[4]})
        values = (*values[:2], *first, *values[7:])
    if row is not None and row["covered"]:      # its requester's aggregate counted it: listed as it is now
        conn.execute("UPDATE jobs SET requester=?, state=?, engine=?, image=?, client=?, labels=?, created_at=?, "
                     "updated_at=?, reason=?, result_cid=?, executions=? WHERE id=?", (*values, e.job_id))
        return False
    if row is not None and mark is not None and e.state.terminal and e.updated_at <= mark:
        # it ended under the mark (a requester's unfinished jobs past what one answer lists): its aggregate
        # counts it, so what this row counted goes: after what the batch moved so far, in the order the events
        # came (a bucket's -1 is floored at 0 and a client's row goes at 0: taken first, they stuck)
        _write_sum(conn, moved, 1)
        moved.clear()
        counted = _Sum()
        counted.add(row)
        _write_sum(conn, counted, -1)
        conn.execute("UPDATE jobs SET requester=?, state=?, engine=?, image=?, client=?, labels=?, created_at=?, "
                     "updated_at=?, reason=?, result_cid=?, executions=?, covered=1 WHERE id=?", (*values, e.job_id))
        return True
    counts = moved.counts
    if old is None:
        _insert(conn, e)
        moved.totals["jobs"] += 1
        moved.bucket(e.created_at, "jobs")
        counts["engine", e.engine.value] += 1
        counts["image", e.image or e.engine.value] += 1
        for k, v in e.labels.items():
            counts["label", f"{k}={v}"] += 1
        if e.client:
            counts["client", e.client] += 1      # a new one counts in "clients" too (_write_sum)
    else:
        conn.execute("UPDATE jobs SET requester=?, state=?, engine=?, image=?, client=?, labels=?, created_at=?, "
                     "updated_at=?, reason=?, result_cid=?, executions=? WHERE id=?", (*values, e.job_id))
        if old == e.state.value:
            return True             # a later snapshot (executions moved): the row is news, no count moves
        counts["state", old] -= 1
    counts["state", e.state.value] += 1
    if e.state.terminal:
        moved.totals[e.state.value] += 1
        moved.bucket(e.updated_at, e.state.value)
        if e.state == JobState.FAILED:
            counts["reason", " ".join(e.reason.split())[:120] or "(no reason)"] += 1
        if e.state == JobState.COMPLETED:
            moved.durations[e.engine.value, duration_bin(e.updated_at - e.created_at)] += 1
        for node in {x.node_id for x in e.executions if x.state != ExecutionState.BID_REJECTED}:
            counts["node", node] += 1
    return True


def _insert(conn: sqlite3.Connection, e: JobEvent, covered: int = 0) -> None:
    conn.execute("INSERT INTO jobs(requester, state, engine, image, client, labels, created_at, updated_at, "
                 "reason, result_cid, executions, id, covered) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (e.requester, e.state.value, e.engine.value, e.image, e.client, json.dumps(e.labels),
                  e.created_at, e.updated_at, e.reason, e.result_cid,
                  json.dumps([x.model_dump(mode="json") for x in e.executions]), e.job_id, covered))


def _event(r: sqlite3.Row) -> JobEvent:
    row = _row(r)
    job_id = row.pop("id")
    return JobEvent.model_validate({**row, "job_id": job_id})


class _Sum:
    """What a set of job rows adds to each figure, as _apply counts them (or an aggregate, read back)."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.buckets: Counter[tuple[str, int, str]] = Counter()     # (unit, start, column)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.durations: Counter[tuple[str, int]] = Counter()

    def clear(self) -> None:
        for c in (self.totals, self.buckets, self.counts, self.durations):
            c.clear()

    def add(self, r: sqlite3.Row) -> None:
        state = JobState(r["state"])
        self.totals["jobs"] += 1
        self.bucket(r["created_at"], "jobs")
        self.counts["engine", r["engine"]] += 1
        self.counts["image", r["image"] or r["engine"]] += 1
        for k, v in json.loads(r["labels"]).items():
            self.counts["label", f"{k}={v}"] += 1
        if r["client"]:
            self.counts["client", r["client"]] += 1
        self.counts["state", state.value] += 1
        if state.terminal:
            self.totals[state.value] += 1
            self.bucket(r["updated_at"], state.value)
            if state == JobState.FAILED:
                self.counts["reason", " ".join(r["reason"].split())[:120] or "(no reason)"] += 1
            if state == JobState.COMPLETED:
                self.durations[r["engine"], duration_bin(r["updated_at"] - r["created_at"])] += 1
            ran = {x["node_id"] for x in json.loads(r["executions"])
                   if x["state"] != ExecutionState.BID_REJECTED.value}
            for node in ran:
                self.counts["node", node] += 1

    def bucket(self, at: float, column: str) -> None:
        for unit, width in UNITS.items():
            self.buckets[unit, int(at // width) * width, column] += 1

    def aggregate(self, since: float, upto: float, now: float) -> Aggregate:
        """As sent: the buckets a page shows, the most counted keys of each dimension."""
        cols = ("jobs", "completed", "failed", "cancelled")
        buckets = []
        for unit, width in UNITS.items():
            first = int(now // width) * width - (SPANS[unit] - 1) * width
            starts = sorted({s for (u, s, _) in self.buckets if u == unit and s >= first})
            buckets += [(unit, s, *(self.buckets[unit, s, c] for c in cols)) for s in starts]
        counts: dict[str, dict[str, int]] = {}
        for (dim, key), n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            keys = counts.setdefault(dim, {})
            if len(keys) < MAX_AGG_KEYS:
                keys[key] = n
        return Aggregate(since=since, upto=upto, totals=dict(self.totals), buckets=buckets[:MAX_AGG_BUCKETS],
                         counts=counts, durations=[(Engine(e), b, n) for (e, b), n in
                                                   sorted(self.durations.items())][:MAX_AGG_BINS])

    @classmethod
    def of(cls, agg: Aggregate) -> _Sum:
        out = cls()
        out.totals.update(agg.totals)
        for unit, start, *ns in agg.buckets:
            for column, n in zip(("jobs", "completed", "failed", "cancelled"), ns, strict=True):
                out.buckets[unit, start, column] += n
        for dim, keys in agg.counts.items():
            for key, n in keys.items():
                out.counts[dim, key] += n
        for engine, b, n in agg.durations:
            out.durations[engine.value, b] += n
        return out


def _write_sum(conn: sqlite3.Connection, s: _Sum, sign: int) -> None:
    for key, n in s.totals.items():
        if n:
            _total(conn, key, sign * n)
    for (unit, start, column), n in s.buckets.items():
        if n:
            conn.execute(f"INSERT INTO buckets(unit, start, {column}) VALUES (?,?,?) "
                         f"ON CONFLICT(unit, start) DO UPDATE SET {column} = max(0, {column} + excluded.{column})",
                         (unit, start, sign * n))
    for (dim, key), n in s.counts.items():
        if not n:
            continue
        if _bump(conn, dim, key, sign * n) and dim == "client" and sign > 0:
            _total(conn, "clients")
        elif dim == "client" and sign < 0 and conn.execute(
                "DELETE FROM counts WHERE dim='client' AND key=? AND n<=0", (key,)).rowcount:
            _total(conn, "clients", -1)     # the client is no longer counted: its aggregate counts it again
    for (engine, b), n in s.durations.items():
        if n:
            conn.execute("INSERT INTO durations(engine, bin, n) VALUES (?,?,?) "
                         "ON CONFLICT(engine, bin) DO UPDATE SET n = max(0, n + excluded.n)", (engine, b, sign * n))


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
