"""The compute node's log-stream server: an execution's stdout and stderr, from any byte offset, following
the files the executors append to until the execution ends.

Wire format (libp2p stream after the request frame, and the same frames on the client's websocket):
    frame  = kind:u8 offset:u64 length:u32 data
    kind   = 1 stdout | 2 stderr | 3 end (data: JSON {"state", "exit_code", "reason"})
Every data frame says where in its stream its bytes start, so a client that reconnects asks for the offsets
it has and gets neither a gap nor a duplicate.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from pydantic import BaseModel, ConfigDict

from bacalhau.bprotocol.ids import ExecutionId

STDOUT, STDERR, END = 1, 2, 3
HEADER = struct.Struct(">BQI")
MAX_CHUNK = 256 * 1024
POLL_INTERVAL = 0.005           # how often a follower looks for new bytes (files are the source of truth)
LOG_PROTOCOL = "/bacalhau/compute/logs/1.0.0"


class LogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    execution_id: ExecutionId
    stdout_offset: int = 0
    stderr_offset: int = 0
    follow: bool = True


@dataclass(frozen=True)
class LogEnd:
    state: str
    exit_code: int | None
    reason: str


def frame(kind: int, offset: int, data: bytes) -> bytes:
    return HEADER.pack(kind, offset, len(data)) + data


def end_frame(end: LogEnd) -> bytes:
    return frame(END, 0, json.dumps({"state": end.state, "exit_code": end.exit_code, "reason": end.reason}).encode())


class FrameReader:
    """Reassembles frames from a byte stream cut at arbitrary places."""

    def __init__(self, max_frame: int = MAX_CHUNK + 4096) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            kind, offset, length = HEADER.unpack_from(self._buf)
            if length > self._max or kind not in (STDOUT, STDERR, END):
                raise ValueError(f"bad log frame (kind {kind}, length {length})")
            if len(self._buf) < HEADER.size + length:
                break
            out.append((kind, offset, bytes(self._buf[HEADER.size:HEADER.size + length])))
            del self._buf[:HEADER.size + length]
        return out


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(MAX_CHUNK)
    except FileNotFoundError:
        return b""


async def stream_logs(
    root: Path, req: LogRequest, status: Callable[[], Awaitable[LogEnd | None]]
) -> AsyncIterator[bytes]:
    """Yield frames of the execution in `root`; `status()` says None while it may still write, else how it
    ended. Attaching before the execution starts waits for it; attaching after it ended gives the whole log."""
    offsets = {STDOUT: req.stdout_offset, STDERR: req.stderr_offset}
    paths = {STDOUT: root / "stdout", STDERR: root / "stderr"}
    while True:
        ended = await status()      # asked before reading, so bytes written before the end are never missed
        progressed = True
        while progressed:
            progressed = False
            for kind in (STDOUT, STDERR):
                data = await trio.to_thread.run_sync(_read_from, paths[kind], offsets[kind])
                if data:
                    yield frame(kind, offsets[kind], data)
                    offsets[kind] += len(data)
                    progressed = True
        if ended is not None:
            yield end_frame(ended)
            return
        if not req.follow:
            yield end_frame(LogEnd("running", None, "not following: the execution is still running"))
            return
        await trio.sleep(POLL_INTERVAL)
