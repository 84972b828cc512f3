"""The dashboard's aggregation on its own (dashboard/store.py) and the node's publish/sync path in process."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from bacalhau.dashboard.events import ExecutionBrief, JobEvent
from bacalhau.dashboard.store import SCHEMA, DashboardStore, duration_bin
from bacalhau.models import Engine, ExecutionState, JobState

REQ = "QmRequesterA"
NODE = "QmComputeB"


def event(job_id: str, state: JobState, at: float, *, created: float, engine: Engine = Engine.NOOP,
          reason: str = "", requester: str = REQ, labels: dict[str, str] | None = None) -> JobEvent:
    executions = [ExecutionBrief(node_id=NODE, state=ExecutionState.COMPLETED if state == JobState.COMPLETED
                                 else ExecutionState.RUNNING)] if state != JobState.PENDING else []
    return JobEvent(job_id=job_id, requester=requester, state=state, engine=engine, image=engine.value,
                    client="client-1", labels=labels or {}, created_at=created, updated_at=at, reason=reason,
                    executions=executions)


def lifecycle(job_id: str, t0: float, end: JobState = JobState.COMPLETED, **kw: object) -> list[JobEvent]:
    return [event(job_id, JobState.PENDING, t0, created=t0, **kw),      # type: ignore[arg-type]
            event(job_id, JobState.IN_PROGRESS, t0 + 1, created=t0, **kw),  # type: ignore[arg-type]
            event(job_id, end, t0 + 2, created=t0, reason="exit 3" if end == JobState.FAILED else "",
                  **kw)]  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = DashboardStore(tmp_path / "dashboard.db")
    yield s
    s.close()


async def test_a_job_counts_once_however_its_events_arrive(store: DashboardStore) -> None:
    t0 = time.time() - 100
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    events = lifecycle(a, t0)
    await store.ingest(events)
    await store.ingest(events)                       # twice
    await store.ingest(reversed(lifecycle(b, t0, JobState.FAILED)))   # out of order: end first
    ev_c = lifecycle(c, t0, labels={"team": "x"})
    await store.ingest(ev_c[:2])
    await store.ingest(ev_c)                          # a requester that restarted replays all it sent
    await store.ingest([ev_c[0]])                     # a stale one after the end
    s = await store.summary()
    assert (s["jobs"], s["completed"], s["failed"], s["running"], s["pending"], s["clients"]) == (3, 2, 1, 0, 0, 1)
    b_ = await store.breakdowns()
    assert {r["key"]: r["count"] for r in b_["state"]} == {"completed": 2, "failed": 1}
    assert b_["engine"] == [{"key": "noop", "count": 3}]
    assert b_["reason"] == [{"key": "exit 3", "count": 1}]
    assert b_["label"] == [{"key": "team=x", "count": 1}]
    assert b_["node"] == [{"key": NODE, "count": 3}]
    minute = await store.timeseries("minute", time.time())
    assert sum(r["jobs"] for r in minute) == 3 and sum(r["failed"] for r in minute) == 1
    assert (await store.durations())["noop"]["count"] == 2


async def test_running_now_follows_the_latest_snapshot(store: DashboardStore) -> None:
    t0 = time.time() - 10
    job = str(uuid.uuid4())
    await store.ingest([event(job, JobState.IN_PROGRESS, t0 + 1, created=t0)])
    assert (await store.summary())["running"] == 1
    await store.ingest([event(job, JobState.PENDING, t0, created=t0)])     # older: no news
    assert (await store.summary())["running"] == 1
    await store.ingest([event(job, JobState.PENDING, t0 + 2, created=t0)])  # retried: waiting again
    s = await store.summary()
    assert (s["running"], s["pending"], s["jobs"]) == (0, 1, 1)
    await store.ingest([event(job, JobState.CANCELLED, t0 + 3, created=t0)])
    await store.ingest([event(job, JobState.COMPLETED, t0 + 4, created=t0)])   # terminal is final
    s = await store.summary()
    assert (s["running"], s["pending"], s["cancelled"], s["completed"]) == (0, 0, 1, 0)


async def test_another_requester_cannot_speak_for_a_job(store: DashboardStore) -> None:
    t0 = time.time() - 10
    job = str(uuid.uuid4())
    await store.ingest([event(job, JobState.IN_PROGRESS, t0 + 1, created=t0)])
    assert not await store.ingest([event(job, JobState.FAILED, t0 + 2, created=t0, requester="QmOther")])
    assert (await store.summary())["failed"] == 0


async def test_time_buckets_sort_in_time_order_across_days(store: DashboardStore) -> None:
    day = 86400
    base = (int(time.time()) // day - 20) * day
    jobs = [(base + d * day + 5, str(uuid.uuid4())) for d in (1, 9, 10, 12)]
    await store.ingest([event(j, JobState.PENDING, t, created=t) for t, j in jobs])
    days = await store.timeseries("day", time.time())
    assert [r["start"] for r in days] == sorted(r["start"] for r in days)
    assert [r["label"] for r in days] == sorted(r["label"] for r in days)
    # from the first day with a job to today, days without as zeros: one row a day
    assert len(days) == 20 and all(len(r["label"]) == 10 for r in days)
    assert [r["jobs"] for r in days if r["jobs"]] == [1, 1, 1, 1] and days[1]["jobs"] == 0
    with pytest.raises(ValueError, match="unit must be one of"):
        await store.timeseries("month", time.time())


async def test_durations_p50_p95_per_engine(store: DashboardStore) -> None:
    t0 = time.time() - 1000
    evs = []
    for i in range(100):
        job = str(uuid.uuid4())
        evs.append(event(job, JobState.COMPLETED, t0 + 1 + i, created=t0, engine=Engine.DOCKER))
    await store.ingest(evs)
    d = (await store.durations())["docker"]
    assert d["count"] == 100
    assert 40 <= d["p50"] <= 62 and 80 <= d["p95"] <= 115     # quarter-doubling bins: within ~19%
    assert duration_bin(0) == 0


def test_a_dashboard_db_of_a_newer_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    from bacalhau.dashboard.store import MIGRATIONS
    from bacalhau.errors import StateError

    path = tmp_path / "dashboard.db"
    DashboardStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) and "CREATE TABLE IF NOT EXISTS jobs" in SCHEMA
    conn.execute("PRAGMA user_version=7")
    conn.close()
    with pytest.raises(StateError, match="newer bacalhau"):
        DashboardStore(path)


# -- the node's side: two requesters over real libp2p in this process -------------------------------------

async def _until(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    import trio

    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.05)


async def test_requesters_see_each_others_jobs_and_a_late_joiner_catches_up(tmp_path: Path) -> None:
    import trio

    from bacalhau.models import JobSpec
    from bacalhau.node import Node
    from tests.conftest import node_config

    async with trio.open_nursery() as nursery:
        a = await nursery.start(Node(node_config(tmp_path / "a", engines=("noop",), serve_api=False)).run)
        b = await nursery.start(Node(node_config(tmp_path / "b", engines=("noop",), serve_api=False,
                                                 peers=(a.addrs()[0],))).run)
        for n in (a, b):
            await _until(lambda n=n: _alive(n, 2))
        ok = await a.requester.submit(JobSpec(engine=Engine.NOOP, labels={"who": "a"}))
        bad = await b.requester.submit(JobSpec.model_validate({"engine": "noop", "noop": {"exit_code": 2}}))

        async def both_done(node: Node) -> bool:
            s = await node.dashboard.store.summary()
            return bool(s["jobs"] == 2 and s["completed"] == 2)
        for n in (a, b):
            await _until(lambda n=n: both_done(n))
        row = await b.dashboard.store.job(ok.id)
        assert row is not None and row["requester"] == a.node_id and row["labels"] == {"who": "a"}
        assert (await a.dashboard.store.job(bad.id))["requester"] == b.node_id  # type: ignore[index]

        # a node that joins now heard none of it: it asks each requester for its recent jobs
        c = await nursery.start(Node(node_config(tmp_path / "c", engines=("noop",), serve_api=False,
                                                 peers=(a.addrs()[0],))).run)
        await _until(lambda: both_done(c))
        assert {r["key"] for r in (await c.dashboard.store.breakdowns())["node"]} <= {a.node_id, b.node_id}
        nursery.cancel_scope.cancel()


async def _alive(node, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(node.dashboard.nodes()) >= n


@pytest.mark.slow
def test_a_requester_that_restarts_counts_nothing_twice(served) -> None:  # type: ignore[no-untyped-def]
    """Real serve processes: n2 is stopped and started again (same repo, same identity). Its own dashboard.db
    keeps its counts, it replays what it publishes anew, n1 catches up with it: each job counts once."""
    from tests.conftest import join_args

    n1 = served("n1").start()
    peer, key = join_args(n1.wait_ready())
    n2 = served("n2", "--peer", peer, "--swarm-key", key).start()
    n2.wait_ready()

    def summary(node) -> dict:  # type: ignore[no-untyped-def,type-arg]
        return node.client().request("GET", "/api/v1/dashboard/summary")  # type: ignore[no-any-return]

    def until(check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, (summary(n1), summary(n2))
            time.sleep(0.1)

    noop = {"engine": "noop"}
    for node in (n1, n2):
        node.client().submit(noop)
    until(lambda: summary(n1)["completed"] == 2 and summary(n2)["completed"] == 2)
    n2.stop()
    n2.start()
    n2.wait_ready()
    assert summary(n2)["jobs"] == 2
    n2.client().submit(noop)
    n1.client().submit(noop)
    until(lambda: summary(n1)["completed"] == 4 and summary(n2)["completed"] == 4)
    time.sleep(1)     # nothing more arrives to count twice
    assert summary(n1)["jobs"] == summary(n2)["jobs"] == 4


async def test_the_stream_sends_a_snapshot_at_once_and_another_when_a_job_ends(single_node) -> None:  # type: ignore[no-untyped-def]
    import json

    import httpx
    import trio

    from bacalhau.models import JobSpec

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{single_node.api_port}", timeout=20) as c:
        async with c.stream("GET", "/api/v1/dashboard/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()

            async def snapshot() -> dict:  # type: ignore[type-arg]
                async for line in lines:
                    if line.startswith("data: "):
                        return json.loads(line[6:])  # type: ignore[no-any-return]
                raise AssertionError("the stream ended")

            first = await snapshot()
            assert first["summary"]["jobs"] == 0 and first["node_id"] == single_node.node_id
            job = await single_node.requester.submit(JobSpec(engine=Engine.NOOP))
            with trio.fail_after(15):
                while True:
                    s = await snapshot()
                    if s["summary"]["completed"] == 1:
                        break
            assert s["latest"][0]["id"] == job.id and s["breakdowns"]["engine"] == [{"key": "noop", "count": 1}]
        assert (await c.get("/api/v1/dashboard/timeseries", params={"unit": "week"})).status_code == 400
        assert (await c.get(f"/api/v1/dashboard/jobs/{job.id}")).json()["local"] is True
        assert (await c.get(f"/api/v1/dashboard/jobs/{uuid.uuid4()}")).status_code == 404


async def test_bacalhau_dashboard_prints_the_url_with_the_token(single_node) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli

    out = await run_cli(single_node, "dashboard", env={"BACALHAU_API_TOKEN": "t/k n"})
    assert out.returncode == 0
    assert out.stdout.strip() == f"http://127.0.0.1:{single_node.api_port}/dashboard?token=t%2Fk%20n"


async def test_the_catch_up_fits_one_frame_whatever_the_jobs_carry(tmp_path: Path) -> None:
    import trio

    from bacalhau.bprotocol.framing import MAX_MESSAGE_BYTES
    from bacalhau.dashboard import events as ev
    from bacalhau.dashboard.service import Dashboard

    store = DashboardStore(tmp_path / "dashboard.db")
    t0 = time.time() - 100
    fat = {f"k{i:02d}" + "x" * 58: "v" * 255 for i in range(ev.MAX_LABELS)}      # ~5 kB a job
    await store.ingest([event(str(uuid.uuid4()), JobState.COMPLETED, t0 + i, created=t0, labels=fat)
                        for i in range(ev.MAX_SYNC_JOBS)])
    d = Dashboard(node_id=REQ, store=store, node_info_ttl=5, hello_interval=1)
    reply = await d._answer_sync("QmAsker", ev.SyncRequest().model_dump_json().encode())
    assert len(reply) < MAX_MESSAGE_BYTES
    from bacalhau.bprotocol.framing import parse_reply

    events = parse_reply(reply, ev.SyncReply).events
    assert 400 < len(events) < ev.MAX_SYNC_JOBS and events[0].updated_at > events[-1].updated_at
    assert events[0].client == "client-1"
    store.close()
    await trio.lowlevel.checkpoint()


async def test_a_batch_moves_the_figures_as_its_events_one_by_one_do(tmp_path: Path) -> None:
    """ingest sums what a batch moves and writes each figure once (issue 14): every figure the page reads is
    what the same events taken one at a time give, repeats, stale snapshots and two clients included."""
    t0 = time.time() - 500
    events: list[JobEvent] = []
    for i in range(12):
        end = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)[i % 3]
        events += lifecycle(str(uuid.uuid4()), t0 + 37 * i, end, labels={"team": "ab"[i % 2]},
                            engine=(Engine.NOOP, Engine.DOCKER)[i % 2])
    events += events[3:9]                                      # repeated
    events.insert(5, event(str(uuid.uuid4()), JobState.PENDING, t0, created=t0))   # one left pending
    stores = [DashboardStore(tmp_path / "one.db"), DashboardStore(tmp_path / "batch.db")]
    try:
        changed = [sum([await stores[0].ingest([e]) for e in events]), await stores[1].ingest(events)]
        assert changed[0] == changed[1] == 13 * 3 - 2, changed     # the left-pending one's single event
        now = time.time()
        figures = []
        for s in stores:
            figures.append([await s.summary(), await s.breakdowns(), await s.durations(),
                            *[await s.timeseries(u, now) for u in ("minute", "hour", "day")]])
        assert figures[0] == figures[1]
        summary = figures[0][0]
        assert (summary["jobs"], summary["pending"], summary["completed"], summary["failed"]) == (13, 1, 4, 4)
    finally:
        for s in stores:
            s.close()
