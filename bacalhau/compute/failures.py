"""Why an execution failed, in words a user can read: the compute node's task boundary turns whatever escaped
an execution (exception groups included) into the one line that becomes the job's reason."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from bacalhau.errors import BacalhauError, ExecutorError, JobCausedError, first_leaf
from bacalhau.ipfs.publish import ResultTooLarge, TooManyEntries

TAIL_KEPT = 4096                      # bytes of stdout/stderr kept when a full disk forces a result's removal
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


class DiskFullError(ExecutorError):
    """The disk holding the node's repo filled up while an execution ran or published."""


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it, or the first error of a group) is a full disk."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, (sqlite3.OperationalError, BacalhauError)) and any(t in str(exc) for t in _DISK_FULL_TEXTS):
            return True
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        stack.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    return False


def expected(error: BaseException) -> bool:
    """The job's doing or the disk's (logged as one line), not a bug of this node (logged with its traceback)."""
    return isinstance(first_leaf(error), BacalhauError) or disk_full(error)


def job_caused(error: BaseException) -> bool:
    """The job's own doing (its module lacks the entry point it names...): another node would fail it alike."""
    return isinstance(first_leaf(error), JobCausedError)


def never_published(error: BaseException) -> bool:
    """A result refused for its size or its entry count: nothing will ever publish it."""
    return isinstance(first_leaf(error), (ResultTooLarge, TooManyEntries))


def reason_for(error: BaseException) -> str:
    """One line for the job's reason: a BacalhauError says it already; anything else is this node's fault."""
    leaf = first_leaf(error)
    if disk_full(error):
        text = str(leaf) if isinstance(leaf, BacalhauError) else f"no space left on device ({leaf})"
        return f"the compute node's disk is full: {text}; the execution's outputs were deleted to free it"
    if isinstance(leaf, BacalhauError):
        return str(leaf)
    return f"the compute node failed running it: {type(leaf).__name__}: {str(leaf)[:200]} (see the node's log)"


def keep_tail(path: Path, size: int = TAIL_KEPT) -> None:
    """Cut a file down to its last `size` bytes, in place."""
    with open(path, "r+b") as f:
        length = f.seek(0, os.SEEK_END)
        if length <= size:
            return
        f.seek(length - size)
        tail = f.read()
        f.seek(0)
        f.write(tail)
        f.truncate(len(tail))
