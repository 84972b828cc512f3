"""The SQLite adapter: one connection per database file, used from one worker thread at a time.

sqlite3 blocks, so every call runs through `trio.to_thread.run_sync` with a limiter of one; callers pass a
function that gets the connection and runs inside one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from bacalhau.errors import StateError

T = TypeVar("T")


class Database:
    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(schema)
        self._limiter = trio.CapacityLimiter(1)
        # Held for every transaction and by close(): a worker thread still in a transaction when its node
        # shuts down (a task outside the node's nursery may have started it) must not find the connection
        # closed under it, which crashed the interpreter (sqlite3 does not guard against that).
        self._lock = threading.Lock()
        self._closed = False

    def _in_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StateError(f"the database {self.path.name} is closed (the node is stopping)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(self._in_tx, fn, limiter=self._limiter)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For start-up and shutdown only, when no other task uses the database."""
        return self._in_tx(fn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
