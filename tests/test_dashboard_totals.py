"""A late joiner takes each requester's aggregates (issue 13): the same figures as a node that saw every job
live, each job counted once whichever way (aggregate, detail, gossip, replayed) it came."""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from bacalhau.bprotocol.framing import parse_reply
from bacalhau.dashboard import events as ev
from bacalhau.dashboard.service import Dashboard
from bacalhau.dashboard.store import SCHEMA, UNITS, DashboardStore
from bacalhau.models import Engine, ExecutionState, JobState

REQ = "QmRequesterA"
OTHER = "QmRequesterB"


def history(n: int, now: float, requester: str = REQ, seed: int = 1, span: float = 0.0) -> list[list[ev.JobEvent]]:
    """n jobs' lifecycles over the last 3 days (most in the last 2 hours; or over the last `span` seconds),
    mixed ends, engines, labels, clients and nodes; the newest few still unfinished."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t0 = now - (rng.uniform(0, span) if span else rng.uniform(0, 7200) if i % 3 else rng.uniform(0, 3 * 86400))
        t0 = min(t0, now - 30) if i < n - 20 else now - rng.uniform(1, 20)
        end = rng.choice([JobState.COMPLETED] * 6 + [JobState.FAILED] * 2 + [JobState.CANCELLED])
        engine = rng.choice([Engine.NOOP, Engine.DOCKER, Engine.WASM])
        node = f"QmNode{rng.randrange(5)}"
        common: dict[str, Any] = dict(job_id=str(uuid.uuid4()), requester=requester, engine=engine,
                                      image=f"{engine.value}:{rng.randrange(3)}", client=f"client-{rng.randrange(40)}",
                                      labels={"team": f"t{rng.randrange(4)}"} if rng.random() < 0.5 else {},
                                      created_at=t0)
        runs = [ev.ExecutionBrief(node_id=node, state=ExecutionState.RUNNING)]
        life = [ev.JobEvent(**common, state=JobState.PENDING, updated_at=t0),
                ev.JobEvent(**common, state=JobState.IN_PROGRESS, updated_at=t0 + 0.5, executions=runs)]
        if i < n - 10:          # the last 10 are still running
            done = [ev.ExecutionBrief(node_id=node, state=ExecutionState.COMPLETED if end == JobState.COMPLETED
                                      else ExecutionState.FAILED)]
            life.append(ev.JobEvent(**common, state=end, updated_at=min(now - 0.1, t0 + rng.uniform(1, 30)),
                                    reason=f"exit {rng.randrange(3)}" if end == JobState.FAILED else "",
                                    executions=done))
        out.append(life)
    return out


async def figures(store: DashboardStore, now: float) -> dict[str, Any]:
    snap = await store.snapshot(now)
    del snap["latest"]
    return snap


async def catch_up(joiner: DashboardStore, requester: DashboardStore, who: str, now: float) -> ev.TotalsReply:
    """The requester's answer as it goes over the wire (through its Dashboard's handler), checked and taken
    as the joiner's service takes it."""
    d = Dashboard(node_id=who, store=requester, node_info_ttl=5, hello_interval=1, clock=lambda: now)
    since = await joiner.mark_of(who)
    raw = await d._answer_totals("QmJoiner", ev.TotalsRequest(since=since).model_dump_json().encode())
    reply = parse_reply(raw, ev.TotalsReply)
    ev.check_aggregate(reply.aggregate, since, now)
    for e in reply.events:
        ev.check_event(e, who, now)
    await joiner.apply_totals(who, reply)
    return reply


async def test_a_late_joiner_shows_what_a_node_that_saw_everything_live_shows(tmp_path: Path) -> None:
    now = time.time()
    lives = history(3000, now) + history(300, now, OTHER, seed=2)
    req, live, joiner = (DashboardStore(tmp_path / f"{n}.db") for n in ("req", "live", "joiner"))
    rng = random.Random(3)
    mine = [e for life in lives for e in life if e.requester == REQ]
    await req.ingest(mine)
    await live.ingest(e for life in lives for e in life)
    # the joiner heard some gossip before it joined: some snapshots of unfinished jobs, some ends, repeats
    heard = rng.sample(mine, 400)
    await joiner.ingest(heard + heard[:50])
    await joiner.ingest(e for life in lives for e in life if e.requester == OTHER)

    reply = await catch_up(joiner, req, REQ, now)
    assert reply.aggregate.totals["jobs"] > 1500       # most came as figures, not rows
    assert len(reply.events) <= 2 * ev.MAX_SYNC_JOBS
    assert await figures(joiner, now) == await figures(live, now)
    assert (await joiner.summary())["jobs"] == 3300

    # late, replayed and out-of-order gossip after the catch-up counts nothing twice
    replay = [e for life in lives for e in life]
    rng.shuffle(replay)
    await joiner.ingest(replay)
    assert await figures(joiner, now) == await figures(live, now)

    # the requester runs on: the next catch-up goes on from the mark (nothing between two, nothing twice)
    later = now + 600
    more = history(500, later, seed=4, span=500)     # jobs submitted after the answer
    await req.ingest(e for life in more for e in life)
    await live.ingest(e for life in more for e in life)
    await joiner.ingest(e for life in more[:100] for e in life)     # part of it heard
    before = await joiner.mark_of(REQ)
    reply = await catch_up(joiner, req, REQ, later)
    assert reply.aggregate.since == before < reply.aggregate.upto
    assert await figures(joiner, later) == await figures(live, later)
    await catch_up(joiner, req, REQ, later)          # asked again at once: nothing moves
    assert await figures(joiner, later) == await figures(live, later)
    latest, seen_live = await joiner.latest(), await live.latest()     # the newest jobs listed, in detail
    assert [j["created_at"] for j in latest] == [j["created_at"] for j in seen_live] and len(latest) == 25
    for j in latest:
        assert await live.job(j["id"]) == j
    for s in (req, live, joiner):
        s.close()


async def test_the_same_answer_taken_twice_counts_once(tmp_path: Path) -> None:
    now = time.time()
    req, joiner = DashboardStore(tmp_path / "req.db"), DashboardStore(tmp_path / "joiner.db")
    await req.ingest(e for life in history(200, now) for e in life)
    d = Dashboard(node_id=REQ, store=req, node_info_ttl=5, hello_interval=1, clock=lambda: now)
    raw = await d._answer_totals("QmJoiner", ev.TotalsRequest().model_dump_json().encode())
    reply = parse_reply(raw, ev.TotalsReply)
    await joiner.apply_totals(REQ, reply)
    once = await figures(joiner, now)
    await joiner.apply_totals(REQ, reply)            # a duplicate (or one that crossed another): stale, ignored
    assert await figures(joiner, now) == once == await figures(req, now)
    req.close()
    joiner.close()


def test_a_dashboard_db_of_the_previous_layout_opens_and_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)          # layout 0, as every node before this one wrote it
    conn.execute("INSERT INTO jobs VALUES ('a1', 'QmR', 'completed', 'noop', 'noop', '', '{}', 1.7e9, 1.7e9, '', "
                 "'', '[]')")
    conn.execute("INSERT INTO totals VALUES ('jobs', 1)")
    conn.commit()
    conn.close()
    store = DashboardStore(path)

    async def check() -> None:
        assert await store.mark_of("QmR") == 0.0
        assert (await store.job("a1"))["state"] == "completed"  # type: ignore[index]
        assert (await store.summary())["jobs"] == 1
    trio.run(check)
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT covered FROM jobs").fetchone()[0] == 0
    conn.close()


def test_buckets_sent_are_only_those_a_page_shows(tmp_path: Path) -> None:
    async def main() -> None:
        now = time.time()
        req = DashboardStore(tmp_path / "req.db")
        await req.ingest(e for life in history(300, now) for e in life)
        reply = await req.totals_of(REQ, 0.0, ev.MAX_SYNC_JOBS, now, ev.MAX_SYNC_BYTES)
        assert len(reply.aggregate.buckets) <= ev.MAX_AGG_BUCKETS
        for unit, start, *_ in reply.aggregate.buckets:
            assert start % UNITS[unit] == 0
        req.close()
    trio.run(main)


async def test_a_node_joining_over_libp2p_shows_a_requesters_3000_jobs(tmp_path: Path) -> None:
    # real nodes in this process; the requester's history is written into its dashboard.db directly (as its
    # own publish loop would have written it), 3,000 jobs being too many to run here
    from bacalhau.node import Node
    from tests.conftest import node_config
    from tests.test_dashboard import _until

    async with trio.open_nursery() as nursery:
        a = await nursery.start(Node(node_config(tmp_path / "a", engines=("noop",), serve_api=False)).run)
        now = time.time()
        lives = history(3000, now, requester=a.node_id)
        await a.dashboard.store.ingest(e for life in lives for e in life)
        c = await nursery.start(Node(node_config(tmp_path / "c", engines=("noop",), serve_api=False,
                                                 peers=(a.addrs()[0],))).run)

        async def caught_up() -> bool:
            return bool((await c.dashboard.store.summary())["jobs"] >= 3000)
        await _until(caught_up, timeout=30)
        mine, theirs = await figures(c.dashboard.store, now), await figures(a.dashboard.store, now)
        assert mine == theirs
        assert await c.dashboard.store.mark_of(a.node_id) > 0
        nursery.cancel_scope.cancel()


async def test_an_unfinished_job_past_what_one_answer_lists_counts_once_when_it_ends(tmp_path: Path) -> None:
    now = time.time()
    req, joiner = DashboardStore(tmp_path / "req.db"), DashboardStore(tmp_path / "joiner.db")
    lives = history(40, now - 120, span=60)[:30]  # 30 jobs that ended a minute or more before the answer...
    lives = [life[:2] for life in lives[:3]] + lives[3:]      # ...but 3 still unfinished
    await req.ingest(e for life in lives for e in life)
    target = lives[20]                             # heard unfinished; it ended under the mark
    await joiner.ingest(target[:2])
    reply = await req.totals_of(REQ, 0.0, 2, now, ev.MAX_SYNC_BYTES)   # lists 2 unfinished of 3, 2 ended of 27
    assert not reply.complete and target[-1].job_id not in {e.job_id for e in reply.events}
    await joiner.apply_totals(REQ, reply)
    await joiner.ingest([target[-1]])              # its end comes by gossip, under the mark
    await joiner.ingest(e for life in lives for e in life)    # and everything replayed
    # the unfinished one not listed is not counted until it changes (its snapshots under the mark may be of a
    # job that has ended): the three end now, after the mark
    ends = [ev.JobEvent.model_validate({**life[1].model_dump(), "state": JobState.COMPLETED,
                                        "updated_at": now + 5}) for life in lives[:3]]
    await req.ingest(ends)
    await joiner.ingest(ends)
    assert await figures(joiner, now + 10) == await figures(req, now + 10)
    assert (await joiner.summary())["jobs"] == 30
    req.close()
    joiner.close()
