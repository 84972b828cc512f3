"""An executor that runs nothing: for control-plane tests and benchmarks. Hookable from tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from bacalhau.executors.types import ExecutionDir
from bacalhau.models import Engine, Job, RunResult
from bacalhau.storage.types import Mount

Hook = Callable[[str, Job], Awaitable[None]]


class NoopExecutor:
    engine = Engine.NOOP

    def __init__(self, on_start: Hook | None = None) -> None:
        self._on_start = on_start
        self._runs: dict[str, tuple[Job, ExecutionDir, trio.CancelScope, trio.Event]] = {}

    async def is_installed(self) -> bool:
        return True

    async def start(self, execution_id: str, job: Job, exec_dir: ExecutionDir, mounts: Sequence[Mount] = ()) -> None:
        if self._on_start is not None:
            await self._on_start(execution_id, job)
        self._runs[execution_id] = (job, exec_dir, trio.CancelScope(), trio.Event())

    async def wait(self, execution_id: str) -> RunResult:
        job, exec_dir, scope, _ = self._runs[execution_id]
        spec = job.spec.noop
        assert spec is not None
        data = spec.stdout.encode()
        exit_text = str(spec.exit_code)

        def write_stdout() -> None:
            if data:
                exec_dir.stdout.write_bytes(data)

        def write_both() -> None:
            write_stdout()
            exec_dir.exit_code.write_text(exit_text)

        # The files in a worker thread: creating one waits for the disk's journal while the stores' commits
        # fsync, and that held the event loop (a tenth of its time on a noop job). One hop for both when the
        # job does not sleep.
        try:
            if not spec.sleep:
                await trio.to_thread.run_sync(write_both)
                return RunResult(exit_code=spec.exit_code, stdout_bytes=len(data), stdout_tail=spec.stdout[-1024:])
            await trio.to_thread.run_sync(write_stdout)   # before sleeping: followers see output while it "runs"
            with scope:
                with trio.move_on_after(job.spec.timeout) as timeout_scope:
                    await trio.sleep(spec.sleep)
                if timeout_scope.cancelled_caught:
                    return RunResult(exit_code=-1, error=f"timed out after {job.spec.timeout:g}s")
            if scope.cancelled_caught:
                return RunResult(exit_code=-1, error="cancelled")
            await trio.to_thread.run_sync(exec_dir.exit_code.write_text, exit_text)
            return RunResult(
                exit_code=spec.exit_code, stdout_bytes=len(data), stdout_tail=spec.stdout[-1024:]
            )
        finally:
            del self._runs[execution_id]

    async def cancel(self, execution_id: str) -> None:
        run = self._runs.get(execution_id)
        if run is not None:
            run[2].cancel()
