"""The WASM executor: wasmtime with WASI, off the event loop.

stdout and stderr go straight to the execution's files as the module writes them (so they stream live like
Docker's); inputs are preopened read-only, `/outputs` read-write. The timeout and cancel interrupt the
module inside the engine by epoch interruption: each run has its own Engine, whose epoch is bumped once.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from bacalhau.errors import ExecutorError
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import Engine, Job, RunResult
from bacalhau.models.job import WASM_INLINE_PREFIX as INLINE_PREFIX
from bacalhau.storage.types import Mount

TAIL_BYTES = 1024
_limiter = trio.CapacityLimiter(4)


def encode_module(data: bytes) -> str:
    return INLINE_PREFIX + base64.b64encode(data).decode()


@dataclass
class _Run:
    job: Job
    exec_dir: ExecutionDir
    engine: object
    module: object
    mounts: list[Mount] = field(default_factory=list)
    why_interrupted: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class WasmExecutor:
    engine = Engine.WASM

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    async def is_installed(self) -> bool:
        try:
            import wasmtime  # noqa: F401
        except ImportError:
            return False
        return True

    async def start(self, execution_id: str, job: Job, exec_dir: ExecutionDir, mounts: Sequence[Mount] = ()) -> None:
        spec = job.spec.wasm
        assert spec is not None
        if not spec.module.startswith(INLINE_PREFIX):
            raise ExecutorError(f"cannot load WASM module {spec.module[:60]!r}: only uploaded modules are supported")
        try:
            data = base64.b64decode(spec.module[len(INLINE_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ExecutorError("the uploaded WASM module is not valid base64") from None
        engine, module = await trio.to_thread.run_sync(_compile, data, limiter=_limiter)
        self._runs[execution_id] = _Run(job, exec_dir, engine, module, list(mounts))

    async def wait(self, execution_id: str) -> RunResult:
        run = self._runs[execution_id]
        timeout = run.job.spec.timeout
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog, run, timeout)
                result = await trio.to_thread.run_sync(_run_blocking, run, limiter=_limiter)
                nursery.cancel_scope.cancel()
        finally:
            del self._runs[execution_id]
        await trio.to_thread.run_sync(run.exec_dir.exit_code.write_text, str(result.exit_code))
        return result

    async def _watchdog(self, run: _Run, timeout: float) -> None:
        await trio.sleep(timeout)
        self._interrupt(run, f"timed out after {timeout:g}s")

    async def cancel(self, execution_id: str) -> None:
        run = self._runs.get(execution_id)
        if run is not None:
            self._interrupt(run, "cancelled")

    @staticmethod
    def _interrupt(run: _Run, why: str) -> None:
        if not run.why_interrupted:
            run.why_interrupted = why
        run.engine.increment_epoch()  # type: ignore[attr-defined]


def _compile(data: bytes) -> tuple[object, object]:
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    try:
        return engine, wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise ExecutorError(f"the WASM module does not compile: {str(exc).splitlines()[0]}") from None


def _tail(path: object) -> str:
    with open(path, "rb") as f:  # type: ignore[call-overload]
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - TAIL_BYTES))
        return f.read().decode(errors="replace")


def _run_blocking(run: _Run) -> RunResult:
    import wasmtime

    spec = run.job.spec.wasm
    assert spec is not None
    store = wasmtime.Store(run.engine)  # type: ignore[arg-type]
    store.set_epoch_deadline(1)
    if run.job.spec.resources.memory:
        store.set_limits(memory_size=run.job.spec.resources.memory)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["main.wasm", *spec.parameters]
    wasi.env = sorted(spec.env.items())
    wasi.stdout_file = str(run.exec_dir.stdout)
    wasi.stderr_file = str(run.exec_dir.stderr)
    wasi.preopen_dir(str(run.exec_dir.outputs), "/outputs")
    for mount in run.mounts:
        wasi.preopen_dir(str(mount.host_dir), mount.path, fs_mutable=False)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(run.engine)  # type: ignore[arg-type]
    linker.define_wasi()
    exit_code, error = 0, ""
    try:
        instance = linker.instantiate(store, run.module)  # type: ignore[arg-type]
        entry = instance.exports(store).get(spec.entry_point)
        if not isinstance(entry, wasmtime.Func):
            raise ExecutorError(f"the WASM module exports no function {spec.entry_point!r}")
        entry(store)
    except wasmtime.ExitTrap as exc:
        exit_code = exc.code
    except wasmtime.Trap as exc:
        if run.why_interrupted:
            exit_code, error = -1, run.why_interrupted
        else:
            exit_code = 134  # a trap is the module crashing: say so on its stderr, like a signal would
            with open(run.exec_dir.stderr, "ab") as f:
                f.write(f"\nwasm trap: {str(exc).splitlines()[0]}\n".encode())
    except wasmtime.WasmtimeError as exc:
        raise ExecutorError(f"the WASM module could not be instantiated: {str(exc).splitlines()[0]}") from None
    stdout_size = run.exec_dir.stdout.stat().st_size
    return RunResult(exit_code=exit_code, error=error, stdout_bytes=stdout_size,
                     stderr_bytes=run.exec_dir.stderr.stat().st_size, stdout_tail=_tail(run.exec_dir.stdout))
