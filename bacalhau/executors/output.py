"""A job's stdout or stderr file, kept up to the node's --max-job-output: what passes the cap is counted and
dropped, and the job is told at the end of its stderr. Any executor that writes the files itself can use it
(wasmtime's `WasiConfig.stdout_custom` takes `lambda data: out.write(f, data)`)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from bacalhau.models.job import TAIL_BYTES


class CappedOutput:
    def __init__(self, name: str, cap: int) -> None:
        self.name = name          # "stdout" or "stderr"
        self.cap = cap
        self.kept = 0             # bytes written to the file
        self.dropped = 0          # bytes past the cap, not written

    def write(self, f: BinaryIO, data: bytes | bytearray | memoryview) -> None:
        room = max(0, self.cap - self.kept)
        if room:
            f.write(data if len(data) <= room else data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def note(self) -> str:
        """The line the job's stderr ends with when this stream passed the cap ("" when it did not)."""
        if not self.dropped:
            return ""
        return (f"bacalhau: {self.name} was truncated at {self.cap} bytes (this node's --max-job-output); "
                f"{self.dropped} more bytes were dropped")


def read_tail(path: Path) -> str:
    """The last TAIL_BYTES of a job's stdout or stderr file, decoded (undecodable bytes as U+FFFD): its
    RunResult's tail."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - TAIL_BYTES))
        return f.read().decode(errors="replace")
