"""The SQLite adapter's shutdown: a transaction still running in a worker thread when the node closes its
stores (it crashed the interpreter once: sqlite3 does not guard a connection closed under a statement)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bacalhau.db import Database
from bacalhau.errors import StateError


async def test_close_waits_for_a_running_transaction_and_later_calls_get_a_clear_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", "CREATE TABLE IF NOT EXISTS t(x INTEGER);")
    started = threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        started.set()
        time.sleep(0.3)
        conn.execute("INSERT INTO t VALUES (1)")
        return 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, slow)
        await trio.to_thread.run_sync(started.wait)
        db.close()            # on the event loop, as Node.run's shutdown does: waits for the transaction
    with pytest.raises(StateError, match="closed"):
        await db.run(lambda conn: conn.execute("SELECT 1"))
    with sqlite3.connect(tmp_path / "x.db") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1   # the transaction committed whole


async def test_grouped_commits_fail_alone_and_a_call_cancelled_before_it_runs_never_runs(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db", "CREATE TABLE IF NOT EXISTS t(x INTEGER);")
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)
        conn.execute("INSERT INTO t VALUES (0)")

    def insert(x: int) -> Callable[[sqlite3.Connection], int]:
        def fn(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?)", (x,))
            if x == 2:
                raise ValueError("two is refused")
            return x
        return fn

    results: dict[int, object] = {}

    async def call(x: int) -> None:
        try:
            results[x] = await db.run(insert(x))
        except ValueError as exc:
            results[x] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, hold)
        await trio.to_thread.run_sync(started.wait)
        for x in (1, 2, 3):
            nursery.start_soon(call, x)
        nursery.start_soon(db.run, insert(4))
        doomed = trio.CancelScope()

        async def cancelled_call() -> None:
            with doomed:
                await db.run(insert(5))

        nursery.start_soon(cancelled_call)
        await trio.sleep(0.05)     # let the calls queue behind the one holding the connection
        doomed.cancel()
        release.set()
    assert results[1] == 1 and results[3] == 3 and isinstance(results[2], ValueError)
    rows = await db.run(lambda conn: sorted(r[0] for r in conn.execute("SELECT x FROM t")))
    assert rows == [0, 1, 3, 4]     # 2 rolled back alone; 5 was cancelled while it waited, so never ran
    db.close()


async def test_a_call_alone_that_raises_leaves_nothing_and_a_read_that_raises_in_a_group_undoes_nothing(
        tmp_path: Path) -> None:
    """Calls without a savepoint: a write alone in its transaction is undone whole when it raises; a call that
    only reads raising in a group leaves the others' writes."""
    db = Database(tmp_path / "s.db", "CREATE TABLE IF NOT EXISTS t(x INTEGER);")

    def refused(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (9)")
        raise ValueError("refused")

    with pytest.raises(ValueError):
        await db.run(refused)
    assert await db.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0], reads=True) == 0

    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    def missing(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT x FROM t").fetchall()
        raise LookupError("no such row")

    errors: list[BaseException] = []

    async def read_missing() -> None:
        try:
            await db.run(missing, reads=True)
        except LookupError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run, hold)
        await trio.to_thread.run_sync(started.wait)
        nursery.start_soon(db.run, lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        nursery.start_soon(read_missing)
        nursery.start_soon(db.run, lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        await trio.sleep(0.05)     # let the three queue into one group behind the one holding the connection
        release.set()
    assert len(errors) == 1
    assert await db.run(lambda conn: sorted(r[0] for r in conn.execute("SELECT x FROM t")), reads=True) == [1, 2]
    db.close()


async def test_a_job_id_prefix_resolves_through_the_index_whatever_its_case_and_characters(tmp_path: Path) -> None:
    from bacalhau.errors import AmbiguousIdError, NotFoundError
    from bacalhau.models import Job, JobSpec
    from bacalhau.requester.store import JobStore

    store = JobStore(tmp_path / "jobs.db")
    spec = JobSpec.model_validate({"engine": "noop"})
    for job_id in ("ab12cd00-0000-4000-8000-000000000001", "ab12ef00-0000-4000-8000-000000000002",
                   "ff000000-0000-4000-8000-000000000003"):
        await store.create_job(Job(id=job_id, spec=spec))
    assert await store.resolve_id("ab12c") == "ab12cd00-0000-4000-8000-000000000001"
    assert await store.resolve_id("AB12E") == "ab12ef00-0000-4000-8000-000000000002"
    assert await store.resolve_id("ff000000-0000-4000-8000-000000000003") == "ff000000-0000-4000-8000-000000000003"
    with pytest.raises(AmbiguousIdError):
        await store.resolve_id("ab12")
    for pattern in ("%", "ab_2", "a%", "\U0010ffff", "ff000000-0000-4000-8000-0000000000034"):
        with pytest.raises(NotFoundError):     # LIKE's wildcards are characters like any other here
            await store.resolve_id(pattern)
    store.close()
