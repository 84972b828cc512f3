"""The Executor protocol every engine implements, and the on-disk layout of one execution.

An execution's directory holds, while it runs and after:
    stdout, stderr    the job's output, appended as the engine produces it (read live by the log server)
    outputs/          mounted read-write at /outputs in the job
    exitCode          written once the job has ended

An execution whose output is known before it runs (a noop job that does not sleep, see executors/noop.py) has
none of these: its ExecutionDir carries a KnownOutput, which the node publishes, serves and logs from memory
(making its four inodes, ext4 allocations while the stores fsync, was a noop job's largest single cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bacalhau.models import Engine, Job, RunResult
from bacalhau.storage.types import Mount

if TYPE_CHECKING:
    from bacalhau.ipfs.publish import Tree


@dataclass
class KnownOutput:
    """The output of an execution, known before it runs: nothing of it is on disk. Before the executor has run
    it (`ran`), it has none (as its files would be empty or missing); after, stdout, an empty stderr, exitCode
    and an empty outputs/ directory, as an ExecutionDir would hold."""

    stdout: str
    exit_code: int
    ran: bool = False

    def tree(self) -> Tree:
        """The result as its directory would hold it (ipfs/publish.py's Tree); empty before it ran."""
        if not self.ran:
            return {}
        return {"exitCode": str(self.exit_code).encode(), "outputs": {}, "stderr": b"",
                "stdout": self.stdout.encode()}


@dataclass(frozen=True)
class ExecutionDir:
    root: Path
    known: KnownOutput | None = field(default=None, compare=False)   # set: no file of it is ever made

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def exit_code(self) -> Path:
        return self.root / "exitCode"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    def create(self) -> None:
        if self.known is not None:
            return
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.stdout.touch()
        self.stderr.touch()


class Executor(Protocol):
    engine: Engine

    async def is_installed(self) -> bool:
        """True only when this engine really works on this node (the node advertises only those)."""
        ...

    async def start(self, execution_id: str, job: Job, exec_dir: ExecutionDir, mounts: Sequence[Mount] = ()) -> None:
        """Prepare and start the job with its inputs mounted read-only; raises ExecutorError when it cannot
        (image missing, engine error)."""
        ...

    async def wait(self, execution_id: str) -> RunResult:
        """Wait for the started job to end (or its timeout to kill it); write exitCode; free engine resources
        (or have them freed at release)."""
        ...

    def release(self, execution_id: str) -> None:
        """The node is done with the execution (its end reported): what wait() left to free then (a container
        to remove) goes now. Returns at once; idempotent; unknown ids are ignored."""
        ...

    async def cancel(self, execution_id: str) -> None:
        """Kill the job if it runs; wait() then returns. Idempotent."""
        ...
