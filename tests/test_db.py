"""The SQLite adapter's shutdown: a transaction still running in a worker thread when the node closes its
stores (it crashed the interpreter once: sqlite3 does not guard a connection closed under a statement)."""

from __future__ import annotations

import sqlite3
import threading
import time
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
