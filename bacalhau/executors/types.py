"""The Executor protocol every engine implements, and the on-disk layout of one execution.

An execution's directory holds, while it runs and after:
    stdout, stderr    the job's output, appended as the engine produces it (read live by the log server)
    outputs/          mounted read-write at /outputs in the job
    exitCode          written once the job has ended
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bacalhau.models import Engine, Job, RunResult
from bacalhau.storage.types import Mount


@dataclass(frozen=True)
class ExecutionDir:
    root: Path

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
        """Wait for the started job to end (or its timeout to kill it); write exitCode; free engine resources."""
        ...

    async def cancel(self, execution_id: str) -> None:
        """Kill the job if it runs; wait() then returns. Idempotent."""
        ...
