"""An executor that runs nothing: for control-plane tests and benchmarks. Hookable from tests.

A noop job that does not sleep and has no inputs has its output known from its spec: the compute node gives
it an ExecutionDir with a KnownOutput (known_output below), and nothing of it is written. One that sleeps
writes its files as any engine does (followers see its stdout while it "runs"; cancel and timeout cut it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from bacalhau.executors.types import ExecutionDir, KnownOutput
from bacalhau.models import Engine, Job, RunResult
from bacalhau.models.job import TAIL_BYTES
from bacalhau.storage.types import Mount

Hook = Callable[[str, Job], Awaitable[None]]


def known_output(job: Job) -> KnownOutput | None:
    """The output of `job`, not yet run, if it is known before it runs: a noop job that neither sleeps nor takes
    inputs (those go into the execution's directory). Its stdout is capped by the spec (MAX_NOOP_STDOUT_CHARS,
    1M characters, up to 4 MiB of UTF-8; what the node holds references the spec, no copy), and the node checks
    the result against --max-result-size as it checks files."""
    spec = job.spec.noop
    if job.spec.engine != Engine.NOOP or spec is None or spec.sleep or job.spec.inputs:
        return None
    return KnownOutput(spec.stdout, spec.exit_code)


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
            if exec_dir.known is not None:
                exec_dir.known.ran = True     # nothing to write: the node serves it from memory
                return RunResult(exit_code=spec.exit_code, stdout_bytes=len(data), stdout_tail=spec.stdout[-TAIL_BYTES:])
            if not spec.sleep:
                await trio.to_thread.run_sync(write_both)
                return RunResult(exit_code=spec.exit_code, stdout_bytes=len(data), stdout_tail=spec.stdout[-TAIL_BYTES:])
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
                exit_code=spec.exit_code, stdout_bytes=len(data), stdout_tail=spec.stdout[-TAIL_BYTES:]
            )
        finally:
            del self._runs[execution_id]

    def release(self, execution_id: str) -> None:
        pass    # wait() left nothing

    async def cancel(self, execution_id: str) -> None:
        run = self._runs.get(execution_id)
        if run is not None:
            run[2].cancel()
