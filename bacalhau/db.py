"""The SQLite adapter: one connection per database file, used from one worker thread at a time.

sqlite3 blocks, so every call runs through `trio.to_thread.run_sync` with a limiter of one; callers pass a
function that gets the connection and runs inside one transaction.

A database's layout is versioned by `PRAGMA user_version`: `schema` is the layout of version 0 (what every
repo before versioning holds, written with CREATE ... IF NOT EXISTS) and `migrations[i]` takes version i to
i + 1, in place, at open. A repo of a newer version than this code knows is refused with one clear line.

Commits are durable (`synchronous=FULL`: the WAL is fsynced at every commit), so what a node acknowledged
survives a power cut, not only a crash of the process. To keep that affordable, commits are grouped: calls
that arrive while a transaction runs are run next, together, in one transaction (one fsync), each in a
savepoint of its own, so one that raises is rolled back alone (a call that only reads, or runs alone, needs
none: the savepoint's two statements were a third of those a noop job ran).

A caller may pass `on_commit`: it is called with the call's value, in the event loop, once the group holding the
call has committed, before any later group runs and whether or not the caller is still waiting (a caller
cancelled after its call was taken is not told, yet its write is in). Calls' hooks run in commit order. A store
keeps an in-memory view of its rows this way that never runs ahead of, nor falls behind, what is on disk.

A row that no longer parses (a NaN an older version let in, a state this version does not know, bytes that
are not UTF-8) is set aside: `set_aside` copies it, raw, into the `quarantine` table with the reason, for the
operator; the store then repairs the row in place (failed, with a reason a user can read) or removes it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from bacalhau.errors import StateError

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")

QUARANTINE = """
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, tbl TEXT NOT NULL, row_id TEXT NOT NULL,
    raw TEXT NOT NULL, error TEXT NOT NULL
);
"""
UNREADABLE_SPEC = '{"engine": "noop"}'     # stands in for a job spec that could not be read back
MAX_REASON_CHARS = 300


class Database:
    def __init__(self, path: Path, schema: str, migrations: Sequence[str] = (), *, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        # bytes that are not UTF-8 in a TEXT column (a damaged file) would fail the whole query, not one row
        self._conn.text_factory = _text
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._conn.executescript(schema)
            self._migrate(migrations)
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(f"{path} cannot be opened ({exc}): it is damaged or not a bacalhau database; "
                                 "move it away and the node starts with an empty one") from None
            raise
        self._busy = False                  # a group is running; calls queue for the next one
        self._queue: list[_Call[Any]] = []
        # Held for every transaction and by close(): a worker thread still in a transaction when its node
        # shuts down (a task outside the node's nursery may have started it) must not find the connection
        # closed under it, which crashed the interpreter (sqlite3 does not guard against that).
        self._lock = threading.Lock()
        self._closed = False

    def _migrate(self, migrations: Sequence[str]) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise StateError(f"{self.path} was written by a newer bacalhau (layout version {version}; this one "
                             f"knows up to {len(migrations)}): upgrade bacalhau or use another --repo")
        for number in range(version, len(migrations)):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, migrations[number].split(";")):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={number + 1}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _in_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StateError(f"the database {self.path.name} is closed (the node is stopping)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                if self._conn.in_transaction:   # SQLite ends it itself on some errors (a full disk)
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    def _in_group(self, calls: list[_Call[Any]]) -> None:
        with self._lock:
            if self._closed:
                error = StateError(f"the database {self.path.name} is closed (the node is stopping)")
                for call in calls:
                    call.error = error
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # a savepoint (two statements more) only where a call's writes may need undoing alone: a call
                # that only reads has nothing to undo, and a call alone has the whole transaction
                alone = len(calls) == 1
                undo = False
                for call in calls:
                    if call.reads or alone:
                        try:
                            call.value = call.fn(self._conn)
                        except Exception as exc:
                            if not alone and not self._conn.in_transaction:
                                raise    # SQLite ended the whole transaction (a full disk): every call failed
                            call.error = exc
                            undo = undo or not call.reads
                        continue
                    self._conn.execute("SAVEPOINT call")
                    try:
                        call.value = call.fn(self._conn)
                    except Exception as exc:
                        if not self._conn.in_transaction:
                            raise    # SQLite ended the whole transaction (a full disk): every call failed
                        self._conn.execute("ROLLBACK TO call")
                        call.error = exc
                    self._conn.execute("RELEASE call")
                if not self._conn.in_transaction:
                    # SQLite ended it itself (SQLITE_FULL) under the one call, which holds that error: a ROLLBACK
                    # raised "cannot rollback - no transaction is active", which the caller got in its place
                    pass
                elif undo:
                    self._conn.execute("ROLLBACK")
                else:
                    self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                for call in calls:
                    call.error = exc if isinstance(exc, Exception) else StateError(f"{self.path.name}: {exc!r}")
                    call.value = None

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, reads: bool = False,
                  on_commit: Callable[[T], None] | None = None) -> T:
        """Run `fn(connection)` in a transaction, in a worker thread, grouped with the calls queued meanwhile.
        `reads`: fn only reads (whatever it raises, it wrote nothing), so it needs no savepoint of its own.
        `on_commit(value)`: called in the event loop once fn's writes are committed (see the module's doc)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        call: _Call[T] = _Call(fn, reads, on_commit)
        self._queue.append(call)
        if self._busy:
            # parked until its group has run (woken once, not through a lock every waiter takes in turn), or
            # until it is the first in line when a group ends: then it runs the next group
            def abort(_: object) -> trio.lowlevel.Abort:
                if call.taken:
                    return trio.lowlevel.Abort.FAILED    # it runs: its caller hears how it went
                self._queue.remove(call)                 # cancelled before it ran: it never runs
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            self._busy = True
            await trio.lowlevel.cancel_shielded_checkpoint()   # calls made meanwhile join this group
        if not call.taken:
            await self._run_group()
        if call.error is not None:
            raise call.error
        return call.value  # type: ignore[return-value]

    async def _run_group(self) -> None:
        """Run every queued call as one transaction, then wake their callers and hand the next group to the
        first call queued meanwhile. Not cancellable: the calls of others are taken."""
        group, self._queue = self._queue, []
        for queued in group:
            queued.taken = True
        me = trio.lowlevel.current_task()
        try:
            await _in_thread(self._in_group, group)
            _committed(group)
        except BaseException as exc:    # the thread could not be started: no call ran
            for queued in group:
                if queued.error is None:
                    queued.error = exc if isinstance(exc, Exception) else StateError(f"{self.path.name}: {exc!r}")
            raise
        finally:
            for queued in group:
                if queued.task is not me:
                    trio.lowlevel.reschedule(queued.task)
            if self._queue:
                trio.lowlevel.reschedule(self._queue[0].task)    # not taken: it runs the next group
            else:
                self._busy = False

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For start-up and shutdown only, when no other task uses the database."""
        return self._in_tx(fn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()


async def _in_thread(fn: Callable[[list[_Call[Any]]], None], group: list[_Call[Any]]) -> None:
    """fn(group) in one of trio's cached worker threads, not to be cancelled: the calls of others are taken
    (cancelled before its thread starts, none would run and their callers got None back), and the thread is not
    abandoned anyway. What trio.to_thread.run_sync does, less what a database does not need: a limiter (one
    group at a time is one), a thread name set and reset by ctypes, a copied context; those were a third of the
    event loop's cost of a hand-off, and a noop job hands off several times."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[None]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(lambda: fn(group), deliver)
    await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)   # raises what fn raised


def _committed(group: list[_Call[Any]]) -> None:
    """Each committed call's hook, in order, with no checkpoint between, before any caller of the group
    resumes: whoever was told of a write sees it in the view. A hook that raises fails its own caller only."""
    for call in group:
        if call.on_commit is not None and call.error is None:
            try:
                call.on_commit(call.value)
            except Exception as exc:
                call.error = exc


class _Call(Generic[T]):
    __slots__ = ("fn", "reads", "on_commit", "task", "taken", "value", "error")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], reads: bool = False,
                 on_commit: Callable[[T], None] | None = None) -> None:
        self.fn = fn
        self.reads = reads
        self.on_commit = on_commit
        self.task = trio.lowlevel.current_task()   # its caller, woken when its group has run
        self.taken = False                   # picked up by a group (it runs, even if its caller goes)
        self.value: T | None = None
        self.error: BaseException | None = None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def set_aside(conn: sqlite3.Connection, table: str, row: sqlite3.Row, error: str) -> None:
    """Keep a copy of a row that does not parse in the `quarantine` table, with why."""
    raw = json.dumps({k: row[k] for k in row.keys()}, default=repr)
    row_id = str(row["id"]) if "id" in row.keys() else ""
    conn.execute("INSERT INTO quarantine(at, tbl, row_id, raw, error) VALUES (?,?,?,?,?)",
                 (time.time(), table, row_id, raw, error))


def why(exc: BaseException) -> str:
    """One short line for a parse error: pydantic's first error with where it was, or the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            text = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        except (IndexError, TypeError, AttributeError):
            text = str(exc)
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text[:MAX_REASON_CHARS]


def real(value: Any, default: float) -> float:
    """A timestamp column read back: a finite number, or `default`."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else default
