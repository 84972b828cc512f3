"""The compute node's log-stream server: an execution's stdout and stderr, from any byte offset, following
the files the executors append to until the execution ends.

Wire format: the frames of log_frames.py (kind, byte offset, data; an end frame last), after the request frame.

The followers of one execution share one watch on its files: one of them at a time looks at both every
POLL_INTERVAL (one worker-thread hop: their sizes and what they grew by) and wakes the others, which take the
new bytes from that look, or read in a thread of their own only when they are behind it. N followers cost one
thread hop per interval, not 2N.

An execution whose output is held in memory (a noop job's, executors/types.py KnownOutput) has no files:
stream_known_logs serves it the same frames from what `read()` says it has printed so far.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from pydantic import BaseModel, ConfigDict

from bacalhau.bprotocol.ids import ExecutionId
from bacalhau.log_frames import END, HEADER, MAX_CHUNK, STDERR, STDOUT, FrameReader, end_frame, frame
from bacalhau.log_frames import Ended as LogEnd

__all__ = ["END", "HEADER", "LOG_PROTOCOL", "STDERR", "STDOUT", "FrameReader", "LogEnd", "LogRequest", "frame",
           "stream_known_logs", "stream_logs"]

# How often an execution's files are looked at for new bytes (they are the source of truth). One look serves
# all its followers in one thread hop, so a lone follower costs what it did at 5 ms with two hops, and waits less.
POLL_INTERVAL = 0.0025
LOG_PROTOCOL = "/bacalhau/compute/logs/1.0.0"


class LogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    execution_id: ExecutionId
    stdout_offset: int = 0
    stderr_offset: int = 0
    follow: bool = True


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(MAX_CHUNK)
    except FileNotFoundError:
        return b""


def _sizes(paths: dict[int, Path]) -> dict[int, float]:
    sizes: dict[int, float] = {}
    for kind, path in paths.items():
        try:
            sizes[kind] = os.stat(path).st_size
        except FileNotFoundError:
            sizes[kind] = 0
    return sizes


def _look(paths: dict[int, Path], known: dict[int, float]) -> tuple[dict[int, float], dict[int, tuple[int, bytes]]]:
    """The files' sizes, and the bytes each grew by since `known` (up to MAX_CHUNK), read in the same hop."""
    sizes = _sizes(paths)
    grown = {kind: (int(known[kind]), _read_from(paths[kind], int(known[kind])))
             for kind in paths if math.isfinite(known[kind]) and sizes[kind] > known[kind]}
    return sizes, grown


class _Watch:
    """The sizes of one execution's stdout and stderr, as its followers last saw them."""

    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self.sizes: dict[int, float] = dict.fromkeys(paths, math.inf)   # not looked at yet: read
        # what the last look read, by kind: (offset, bytes). The files only grow, so these stay true; a
        # follower that has read up to that offset takes them without a thread hop of its own
        self.grown: dict[int, tuple[int, bytes]] = {}
        self.users = 0
        self._tick = trio.Event()
        self._looking = False

    async def next_tick(self) -> None:
        """Return after the next look at the files: this follower takes it unless another one already does."""
        if self._looking:
            await self._tick.wait()
            return
        self._looking = True
        try:
            await trio.sleep(POLL_INTERVAL)
            sizes, grown = await trio.to_thread.run_sync(_look, self.paths, self.sizes)
            self.sizes, self.grown = sizes, self.grown | grown
        finally:
            # also when this follower left mid-look: the others wake, and one of them looks next
            self._looking = False
            tick, self._tick = self._tick, trio.Event()
            tick.set()


_watches: dict[Path, _Watch] = {}


@contextmanager
def _watching(root: Path) -> Iterator[_Watch]:
    watch = _watches.get(root)
    if watch is None:
        watch = _watches[root] = _Watch({STDOUT: root / "stdout", STDERR: root / "stderr"})
    watch.users += 1
    try:
        yield watch
    finally:
        watch.users -= 1
        if not watch.users:
            del _watches[root]


async def stream_logs(
    root: Path, req: LogRequest, status: Callable[[], Awaitable[LogEnd | None]]
) -> AsyncIterator[bytes]:
    """Yield frames of the execution in `root`; `status()` says None while it may still write, else how it
    ended. Attaching before the execution starts waits for it; attaching after it ended gives the whole log."""
    offsets = {STDOUT: req.stdout_offset, STDERR: req.stderr_offset}
    with _watching(root) as watch:
        while True:
            ended = await status()      # asked before reading, so bytes written before the end are never missed
            progressed = True
            while progressed:
                progressed = False
                for kind in (STDOUT, STDERR):
                    if ended is None and watch.sizes[kind] <= offsets[kind]:
                        continue    # nothing new since the last look (after the end: read to the end anyway)
                    cached = watch.grown.get(kind)
                    if cached is not None and cached[0] == offsets[kind] and cached[1]:
                        data = cached[1]
                    else:
                        data = await trio.to_thread.run_sync(_read_from, watch.paths[kind], offsets[kind])
                    if data:
                        yield frame(kind, offsets[kind], data)
                        offsets[kind] += len(data)
                        progressed = True
            last = _last_frame(ended, req.follow)
            if last is not None:
                yield last
                return
            await watch.next_tick()


def _last_frame(ended: LogEnd | None, follow: bool) -> bytes | None:
    """The frame that ends a log stream here (the execution ended, or the request does not follow), or None."""
    if ended is not None:
        return end_frame(ended)
    if not follow:
        return end_frame(LogEnd("running", None, "not following: the execution is still running"))
    return None


async def stream_known_logs(
    read: Callable[[], Awaitable[tuple[bytes, bytes]]], req: LogRequest,
    status: Callable[[], Awaitable[LogEnd | None]],
) -> AsyncIterator[bytes]:
    """stream_logs for an execution whose output is in memory: `read()` gives its stdout and stderr so far
    (they only grow, as files would), in frames of at most MAX_CHUNK bytes from the request's offsets."""
    offsets = {STDOUT: req.stdout_offset, STDERR: req.stderr_offset}
    while True:
        ended = await status()      # asked before reading, as stream_logs does
        stdout, stderr = await read()
        for kind, data in ((STDOUT, stdout), (STDERR, stderr)):
            while offsets[kind] < len(data):
                chunk = data[offsets[kind]:offsets[kind] + MAX_CHUNK]
                yield frame(kind, offsets[kind], chunk)
                offsets[kind] += len(chunk)
        last = _last_frame(ended, req.follow)
        if last is not None:
            yield last
            return
        await trio.sleep(POLL_INTERVAL)
