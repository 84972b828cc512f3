"""Signatures the API has accepted, so that each is accepted once.

A signature is good for MAX_AGE seconds either side of the requester's clock (signing.py); one seen within
that window is a replay. They are kept in SQLite (`api.db` in the repo), so a restart does not reopen the
window; rows older than the window are dropped as new ones come in.

A submit's signature is not kept here but in the job store, in the transaction that stores the job (one
durable commit for a submit, not two in a row; requester/store.py). At start the node hands the job store the
signatures of this table still inside the window, so none accepted here before an upgrade is accepted twice.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bacalhau.db import Database
from bacalhau.errors import ReplayedSignature
from bacalhau.signing import MAX_AGE

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_signatures (
    signature TEXT PRIMARY KEY,
    signed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_signatures_signed_at ON seen_signatures (signed_at);
"""   # layout version 0 (db.py versions it; migrations go there)


ReplayError = ReplayedSignature


class SeenSignatures:
    def __init__(self, path: Path) -> None:
        self._db = Database(path, SCHEMA)

    async def accept(self, signature: str, signed_at: float) -> None:
        """Record `signature`; ReplayError if it was recorded before."""
        now = time.time()

        def tx(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM seen_signatures WHERE signed_at < ?", (now - 2 * MAX_AGE,))
            cur = conn.execute("INSERT OR IGNORE INTO seen_signatures (signature, signed_at) VALUES (?, ?)",
                               (signature, signed_at))
            return cur.rowcount == 1

        if not await self._db.run(tx):
            raise ReplayError()

    def recent(self, since: float) -> list[tuple[str, float]]:
        """The signatures signed at `since` or later (start-up only: they are handed to the job store, which
        records submits' signatures in the job's own transaction)."""
        rows = self._db.run_sync(lambda conn: conn.execute(
            "SELECT signature, signed_at FROM seen_signatures WHERE signed_at >= ?", (since,)).fetchall())
        return [(str(r["signature"]), float(r["signed_at"])) for r in rows]

    def close(self) -> None:
        self._db.close()
