"""Attacks on the dashboard's batched figures (d7ac9e4: a batch of events writes each figure it moves once,
summed): a requester gossiping, or answering a catch-up with, snapshots crafted so that a batch gives other
figures than the same snapshots one by one, or so that a count goes below zero or keeps a row no job holds.

Each crafted snapshot passes the checks every peer's event passes (events.check_event, asserted here); the
store is then given them as the node's write loop gives them (a batch, one transaction)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from bacalhau.dashboard import events as ev
from bacalhau.dashboard.store import DashboardStore
from bacalhau.models import Engine, ExecutionState, JobState

REQ = "12D3KooWRequester"
OTHER = "12D3KooWOther"


def snap(job_id: str, state: JobState, at: float, *, created: float, requester: str = REQ, client: str = "",
         labels: dict[str, str] | None = None, image: str = "noop") -> ev.JobEvent:
    e = ev.JobEvent(job_id=job_id, requester=requester, state=state, engine=Engine.NOOP, image=image,
                    client=client, labels=labels or {}, created_at=created, updated_at=at,
                    executions=[ev.ExecutionBrief(node_id="QmNode", state=ExecutionState.COMPLETED)]
                    if state.terminal else [])
    ev.check_event(e, requester)      # what the node asks of every peer's snapshot: these pass
    return e


async def mark(store: DashboardStore, upto: float) -> None:
    """REQ's catch-up answer: nothing ended up to `upto` (a mark, as a late joiner holds one)."""
    agg = ev.Aggregate(since=0.0, upto=upto)
    ev.check_aggregate(agg, 0.0)
    await store.apply_totals(REQ, ev.TotalsReply(aggregate=agg, events=[], complete=False, now=time.time()))
    assert await store.mark_of(REQ) == upto


def raw(store: DashboardStore) -> Any:
    """Every figure as stored, rows at zero included (what later writes build on)."""
    def read(conn: sqlite3.Connection) -> Any:
        return ([tuple(r) for r in conn.execute("SELECT * FROM totals ORDER BY key")],
                [tuple(r) for r in conn.execute("SELECT * FROM buckets ORDER BY unit, start")],
                [tuple(r) for r in conn.execute("SELECT * FROM counts ORDER BY dim, key")],
                [tuple(r) for r in conn.execute("SELECT * FROM durations ORDER BY engine, bin")])
    return store._db.run_sync(read)


async def test_a_first_snapshot_and_an_end_under_the_mark_in_one_batch_move_what_they_move_one_by_one(
        tmp_path: Path) -> None:
    # a job's first snapshot after REQ's mark, then its end dated under the mark, in one batch: the end takes
    # back what the first counted (its aggregate holds it). On d7ac9e4 that -1 was written before the batch's
    # +1: a minute bucket at 0 floored it (the job stayed counted there), and a client new to the node kept a
    # row no job held, so the client's next real job was never counted in "clients"
    now = time.time()
    minute = int((now - 600) // 60) * 60
    stores = [DashboardStore(tmp_path / "one.db"), DashboardStore(tmp_path / "batch.db")]
    try:
        other = str(uuid.uuid4())     # a job of another requester that ended in `minute` (its bucket: jobs 0)
        seed = [snap(other, JobState.COMPLETED, minute + 5, created=minute - 3000, requester=OTHER)]
        x = str(uuid.uuid4())
        attack = [snap(x, JobState.PENDING, now - 10, created=minute + 10, client="mallory"),
                  snap(x, JobState.COMPLETED, minute + 20, created=minute + 10, client="mallory")]
        later = [snap(str(uuid.uuid4()), JobState.PENDING, now - 5, created=now - 5, client="mallory")]
        for s in stores:
            await s.ingest(seed)
            await mark(s, now - 60)
        for e in attack:
            await stores[0].ingest([e])
        await stores[1].ingest(attack)
        assert raw(stores[1]) == raw(stores[0])
        for s in stores:
            await s.ingest(later)
        figures = [[await s.summary(), await s.timeseries("minute", now)] for s in stores]
        assert figures[1] == figures[0]
        assert figures[1][0]["clients"] == 1      # mallory's one job not under the mark
        assert next(r for r in figures[1][1] if r["start"] == minute)["jobs"] == 0
    finally:
        for s in stores:
            s.close()


async def test_a_catch_up_listing_a_job_twice_moves_what_it_moves_one_by_one(tmp_path: Path) -> None:
    # the same through a catch-up answer (its events are taken after its aggregate, in one transaction): a job
    # listed unfinished, then ended under the answer's mark
    now = time.time()
    minute = int((now - 600) // 60) * 60
    x = str(uuid.uuid4())
    listed = [snap(x, JobState.IN_PROGRESS, minute + 15, created=minute + 10, client="mallory"),
              snap(x, JobState.COMPLETED, minute + 20, created=minute + 10, client="mallory")]
    seed = [snap(str(uuid.uuid4()), JobState.COMPLETED, minute + 5, created=minute - 3000, requester=OTHER)]
    agg = ev.Aggregate(since=0.0, upto=now - 60)
    ev.check_aggregate(agg, 0.0)
    store = DashboardStore(tmp_path / "dashboard.db")
    try:
        await store.ingest(seed)
        await store.apply_totals(REQ, ev.TotalsReply(aggregate=agg, events=listed, complete=True, now=now))
        await store.ingest([snap(str(uuid.uuid4()), JobState.PENDING, now - 5, created=now - 5,
                                 client="mallory")])
        s = await store.summary()
        assert (s["jobs"], s["clients"]) == (2, 1)
        assert next(r for r in await store.timeseries("minute", now) if r["start"] == minute)["jobs"] == 0
    finally:
        store.close()


async def test_a_requester_cannot_change_what_a_job_is_to_uncount_others(tmp_path: Path) -> None:
    # a job counted under one client, label and minute, then snapshots saying another: when its requester's
    # catch-up takes back what the row counted, it took back the new ones (another requester's label and
    # client, a bucket below zero) and left the first ones counted for good
    now = time.time()
    minute = int((now - 900) // 60) * 60
    store = DashboardStore(tmp_path / "dashboard.db")
    try:
        honest = snap(str(uuid.uuid4()), JobState.IN_PROGRESS, now - 30, created=now - 30, requester=OTHER,
                      client="alice", labels={"team": "b"})
        x = str(uuid.uuid4())
        await store.ingest([honest, snap(x, JobState.PENDING, now - 20, created=now - 20, client="mallory",
                                         labels={"team": "a"})])
        await store.ingest([snap(x, JobState.IN_PROGRESS, now - 10, created=minute + 1, client="alice",
                                 labels={"team": "b"}, image="other")])
        agg = ev.Aggregate(since=0.0, upto=now - 60)
        ev.check_aggregate(agg, 0.0)      # complete, and x not listed: it ended, up to the mark
        await store.apply_totals(REQ, ev.TotalsReply(aggregate=agg, events=[], complete=True, now=now))
        totals, buckets, counts, _ = raw(store)
        assert all(n >= 0 for (*_, n) in counts), counts
        assert all(min(b[2:]) >= 0 for b in buckets), buckets
        s = await store.summary()
        assert (s["jobs"], s["running"], s["clients"]) == (1, 1, 1)         # OTHER's job alone
        b = await store.breakdowns()
        assert b["label"] == [{"key": "team=b", "count": 1}] and b["image"] == [{"key": "noop", "count": 1}]
    finally:
        store.close()
