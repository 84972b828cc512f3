"""dashboard.db failing to take a write (its disk full: a job filled it) must not end the node: the dashboard's
figures are derived, the jobs are not. Seen in a full run: a job that filled a small disk made the dashboard's
publish loop raise "database or disk is full", and the whole node ended with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, JobSpec, JobState
from bacalhau.node import Node, NodeDeps


async def test_a_dashboard_db_that_cannot_grow_does_not_end_the_node_and_its_events_come_later(
        tmp_path: Path) -> None:
    cfg = NodeConfig(repo_dir=tmp_path, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                      executors={Engine.NOOP: NoopExecutor()})).run)
        # SQLite's own cap on the file's pages, set at what it holds: every write that grows it fails with
        # "database or disk is full", as on a full disk, for this file alone (the job stores go on)
        db = node.dashboard.store._db
        pages = db.run_sync(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        db.run_sync(lambda conn: conn.execute(f"PRAGMA max_page_count={pages}"))
        ids = [(await node.requester.submit(JobSpec(engine=Engine.NOOP))).id for _ in range(40)]
        with trio.fail_after(20):
            while not all([(await node.requester.store.get_job(i, full=False)).state.terminal for i in ids]):
                await trio.sleep(0.05)
            await trio.sleep(1.5)        # the publish loop has tried (and failed) by now
        assert all([(await node.requester.store.get_job(i, full=False)).state == JobState.COMPLETED for i in ids])
        assert await node.dashboard.store.job(ids[-1]) is None     # not written: the file could not grow
        try:       # and what a caller hears is why (it heard "cannot rollback - no transaction is active")
            await node.dashboard.store.ingest([])
            await db.run(lambda conn: conn.execute("CREATE TABLE filler(x)"))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc), exc
        else:
            raise AssertionError("the file grew past its cap")
        late = await node.requester.submit(JobSpec(engine=Engine.NOOP))   # the node still serves
        with trio.fail_after(10):
            while not (await node.requester.store.get_job(late.id, full=False)).state.terminal:
                await trio.sleep(0.05)
        db.run_sync(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))    # room again
        with trio.fail_after(15):         # what could not be written is written after all
            while any([await node.dashboard.store.job(i) is None for i in [*ids, late.id]]):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_each_write_of_a_group_on_a_full_database_hears_that_it_is_full(tmp_path: Path) -> None:
    """Writes grouped in one transaction, the file capped (as a full disk): SQLite may end the transaction
    itself; each caller hears "database or disk is full" (not "cannot rollback/commit - no transaction is
    active"), nothing of theirs is in, and the database takes writes again once there is room."""
    from bacalhau.db import Database

    db = Database(tmp_path / "x.db", "CREATE TABLE IF NOT EXISTS t(x BLOB);")
    pages = db.run_sync(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    db.run_sync(lambda conn: conn.execute(f"PRAGMA max_page_count={pages}"))
    errors: list[str] = []

    async def write(size: int) -> None:
        try:
            await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (b"x" * size,)))
        except sqlite3.Error as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for size in (10, 100_000, 10, 200_000):
            nursery.start_soon(write, size)
    assert errors and all("full" in e for e in errors), errors
    db.run_sync(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))
    await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (b"y",)))
    rows = db.run_sync(lambda conn: conn.execute("SELECT x FROM t").fetchall())
    assert [bytes(r[0]) for r in rows][-1] == b"y" and all(len(r[0]) < 100_000 for r in rows), len(rows)
    db.close()
