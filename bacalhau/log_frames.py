"""Log frames: how a job's stdout and stderr travel, defined once for every hop (compute node -> requester ->
client). Standard library only: the CLI imports it, and a client command starts fast.

A data frame, on the compute node's libp2p log stream and as a binary websocket message to the client:
    frame  = kind:u8 offset:u64 length:u32 data
    kind   = 1 stdout | 2 stderr | 3 end (libp2p only; data: JSON {"state", "exit_code", "reason"})
Every data frame says where in its stream its bytes start, so a client that reconnects asks for the offsets
it has and gets neither a gap nor a duplicate.

On the websocket, text messages are JSON events:
    {"type": "execution", "execution_id", "node_id"}   frames that follow belong to this execution
    {"type": "retry", "execution_id", "reason"}        that execution failed; the job goes on elsewhere
    {"type": "end", "state", "exit_code", "reason"}    nothing more will come ("error": the logs cannot be read)

The requester's `read_logs` yields these as the `LogEvent` values below; `to_message` and `from_message` are
the websocket's encoding of them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

STDOUT, STDERR, END = 1, 2, 3
HEADER = struct.Struct(">BQI")
MAX_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Data:
    kind: int          # STDOUT or STDERR
    offset: int        # where `data` starts in its stream
    data: bytes


@dataclass(frozen=True)
class Switched:
    """The frames that follow belong to this execution (offsets start again from what the client has of it)."""

    execution_id: str
    node_id: str


@dataclass(frozen=True)
class Retried:
    """The execution followed so far failed: the job goes on elsewhere."""

    execution_id: str
    reason: str


@dataclass(frozen=True)
class Ended:
    """Nothing more will come. `state` is the job's state (a terminal one, or "running" when not following),
    or "error" when the logs cannot be read (`reason` says why)."""

    state: str
    exit_code: int | None
    reason: str


LogEvent = Data | Switched | Retried | Ended


def frame(kind: int, offset: int, data: bytes) -> bytes:
    return HEADER.pack(kind, offset, len(data)) + data


def _end_fields(end: Ended) -> dict[str, Any]:
    return {"state": end.state, "exit_code": end.exit_code, "reason": end.reason}


def end_frame(end: Ended) -> bytes:
    return frame(END, 0, json.dumps(_end_fields(end)).encode())


def parse_end(data: bytes) -> Ended:
    """An end frame's data; ValueError if it is not one (it comes from a peer)."""
    fields = json.loads(data)
    if not isinstance(fields, dict):
        raise ValueError("a log end frame is not a JSON object")
    code = fields.get("exit_code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise ValueError(f"a log end frame's exit_code is not an integer: {code!r}")
    return Ended(str(fields.get("state", "")), code, str(fields.get("reason") or ""))


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


def to_message(event: LogEvent) -> bytes | str:
    """The websocket message for `event`: a data frame is binary, the others JSON text."""
    if isinstance(event, Data):
        return frame(event.kind, event.offset, event.data)
    if isinstance(event, Switched):
        return json.dumps({"type": "execution", "execution_id": event.execution_id, "node_id": event.node_id})
    if isinstance(event, Retried):
        return json.dumps({"type": "retry", "execution_id": event.execution_id, "reason": event.reason})
    return json.dumps({"type": "end", **_end_fields(event)})


def from_message(message: bytes | str) -> LogEvent:
    """The event a websocket message carries; ValueError if it is not one."""
    try:
        return _from_message(message)
    except (KeyError, TypeError, struct.error) as exc:
        raise ValueError(f"not a log message: {exc!r}") from None


def _from_message(message: bytes | str) -> LogEvent:
    if isinstance(message, bytes):
        kind, offset, length = HEADER.unpack_from(message)
        if kind not in (STDOUT, STDERR):
            raise ValueError(f"bad log frame kind {kind}")
        return Data(kind, offset, message[HEADER.size:HEADER.size + length])
    event = json.loads(message)
    kind_of = event["type"]
    if kind_of == "execution":
        return Switched(str(event["execution_id"]), str(event["node_id"]))
    if kind_of == "retry":
        return Retried(str(event["execution_id"]), str(event.get("reason") or ""))
    if kind_of == "end":
        code = event.get("exit_code")
        return Ended(str(event["state"]), int(code) if code is not None else None, str(event.get("reason") or ""))
    raise ValueError(f"unknown log event {kind_of!r}")
