"""The WASM executor: wasmtime with WASI, off the event loop.

stdout and stderr go straight to the execution's files as the module writes them (so they stream live like
Docker's); inputs are preopened read-only (wasmtime 50's `fs_mutable=False`: no file under them opens for
writing, nothing can be created, renamed or removed there), `/outputs` read-write. A module's linear memory is
capped by the job's memory, or the node's --wasm-memory-limit when it asks for none.

The timeout and cancel interrupt the module inside the engine by epoch interruption: each run has its own
Engine, whose epoch is bumped once. Wasmtime checks the epoch only in wasm code: a module blocked inside a
WASI host call (poll_oneoff asked to sleep an hour, a read that waits) is not interrupted until the call
returns. So the runner thread gets WASM_STOP_GRACE seconds after the bump; a run still inside a host call then
is abandoned: wait() returns the timeout (or cancel) reason at once and the thread is left to end on its own,
which it does at its next wasm instruction once the call returns (the epoch is already past its deadline).
While MAX_STUCK_RUNS such threads are alive, the executor refuses new runs with a clear reason.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from bacalhau.config import DEFAULT_MAX_JOB_OUTPUT, DEFAULT_WASM_MEMORY_LIMIT
from bacalhau.errors import ExecutorError, JobCausedError
from bacalhau.executors.output import CappedOutput, read_tail
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import Engine, Job, RunResult
from bacalhau.models.job import WASM_INLINE_PREFIX as INLINE_PREFIX
from bacalhau.storage.types import Mount

if TYPE_CHECKING:
    import wasmtime  # imported where it runs: a client command need not load it

log = logging.getLogger(__name__)
WASM_STOP_GRACE = 1.0     # seconds a run gets after its epoch bump before it is abandoned (in a host call)
MAX_STUCK_RUNS = 8        # abandoned runner threads still alive before new runs are refused
MAX_TABLE_ELEMENTS = 1_000_000
_limiter = trio.CapacityLimiter(4)      # compiling
# runs: a thread abandoned in a host call holds its token until it ends, so not trio's shared default limiter;
# the node's capacity bounds how many run at once
_run_limiter = trio.CapacityLimiter(math.inf)


def encode_module(data: bytes) -> str:
    return INLINE_PREFIX + base64.b64encode(data).decode()


@dataclass
class _Run:
    job: Job
    exec_dir: ExecutionDir
    engine: wasmtime.Engine
    module: wasmtime.Module
    mounts: list[Mount] = field(default_factory=list)
    memory_limit: int = 0
    outputs: dict[str, CappedOutput] = field(default_factory=dict)   # stdout, stderr: kept up to the node's cap
    why_interrupted: str = ""
    done: threading.Event = field(default_factory=threading.Event)   # set when the runner thread ends
    result: RunResult | None = None
    error: Exception | None = None


class WasmExecutor:
    engine = Engine.WASM

    def __init__(self, memory_limit: int = DEFAULT_WASM_MEMORY_LIMIT, max_output: int = DEFAULT_MAX_JOB_OUTPUT) -> None:
        self._runs: dict[str, _Run] = {}
        self._memory_limit = memory_limit
        self._max_output = max_output
        self._stuck: list[_Run] = []    # abandoned inside a host call, thread still alive

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
            raise JobCausedError(f"cannot load WASM module {spec.module[:60]!r}: only uploaded modules are supported")
        try:
            data = base64.b64decode(spec.module[len(INLINE_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise JobCausedError("the uploaded WASM module is not valid base64") from None
        self._stuck = [r for r in self._stuck if not r.done.is_set()]
        if len(self._stuck) >= MAX_STUCK_RUNS:
            raise ExecutorError(f"{len(self._stuck)} WASM runs that were stopped are still inside blocking WASI "
                                f"calls on this node; it takes no more WASM jobs until they return")
        engine, module = await trio.to_thread.run_sync(_compile, data, limiter=_limiter)
        memory = job.spec.resources.memory or self._memory_limit
        outputs = {name: CappedOutput(name, self._max_output) for name in ("stdout", "stderr")}
        self._runs[execution_id] = _Run(job, exec_dir, engine, module, list(mounts), memory_limit=memory,
                                        outputs=outputs)

    async def wait(self, execution_id: str) -> RunResult:
        run = self._runs[execution_id]
        timeout = run.job.spec.timeout
        finished = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._runner, run, finished)
                with trio.move_on_after(timeout):
                    await finished.wait()
                if not finished.is_set():
                    self._interrupt(run, f"timed out after {timeout:g}s")
                with trio.move_on_after(WASM_STOP_GRACE if run.why_interrupted else math.inf):
                    await finished.wait()
                nursery.cancel_scope.cancel()   # a runner still inside a host call is abandoned
        finally:
            self._runs.pop(execution_id, None)
        if run.error is not None:
            raise run.error
        result = run.result
        if result is None:
            self._stuck.append(run)
            log.warning("WASM execution %s %s inside a blocking WASI call: its thread is left to end on its own",
                        execution_id, run.why_interrupted)
            result = await trio.to_thread.run_sync(
                _result, run, -1, f"{run.why_interrupted} (stopped inside a blocking WASI call)")
        await trio.to_thread.run_sync(run.exec_dir.exit_code.write_text, str(result.exit_code))
        return result

    @staticmethod
    async def _runner(run: _Run, finished: trio.Event) -> None:
        try:
            run.result = await trio.to_thread.run_sync(_run_in_thread, run, abandon_on_cancel=True,
                                                       limiter=_run_limiter)
        except Exception as exc:   # the module's fault or the engine's: wait() raises it, outside any group
            run.error = exc
        finally:
            finished.set()

    def release(self, execution_id: str) -> None:
        pass    # wait() left nothing

    async def cancel(self, execution_id: str) -> None:
        run = self._runs.get(execution_id)
        if run is not None:
            self._interrupt(run, "cancelled")

    @staticmethod
    def _interrupt(run: _Run, why: str) -> None:
        if not run.why_interrupted:
            run.why_interrupted = why
        run.engine.increment_epoch()


def _compile(data: bytes) -> tuple[wasmtime.Engine, wasmtime.Module]:
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    try:
        return engine, wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as exc:
        raise JobCausedError(f"the WASM module does not compile: {str(exc).splitlines()[0]}") from None




def _result(run: _Run, exit_code: int, error: str) -> RunResult:
    out, err = run.outputs.get("stdout"), run.outputs.get("stderr")
    return RunResult(exit_code=exit_code, error=error, stdout_bytes=run.exec_dir.stdout.stat().st_size,
                     stderr_bytes=run.exec_dir.stderr.stat().st_size, stdout_tail=read_tail(run.exec_dir.stdout),
                     stdout_truncated=bool(out and out.truncated), stderr_truncated=bool(err and err.truncated),
                     stderr_tail=read_tail(run.exec_dir.stderr))


def _run_in_thread(run: _Run) -> RunResult:
    try:
        return _run_blocking(run)
    finally:
        run.done.set()


def _run_blocking(run: _Run) -> RunResult:
    import wasmtime

    spec = run.job.spec.wasm
    assert spec is not None
    store = wasmtime.Store(run.engine)
    store.set_epoch_deadline(1)
    store.set_limits(memory_size=run.memory_limit, table_elements=MAX_TABLE_ELEMENTS)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["main.wasm", *spec.parameters]
    wasi.env = sorted(spec.env.items())
    # the module's output goes through the node's cap (--max-job-output): past it, bytes are counted and dropped
    files: dict[str, BinaryIO] = {name: open(run.exec_dir.root / name, "ab", buffering=0)  # noqa: SIM115
                                  for name in ("stdout", "stderr")}
    try:
        return _run_with_output(run, store, wasi, files)
    finally:
        for f in files.values():
            f.close()
        notes = "".join(f"\n{note}\n" for note in (out.note() for out in run.outputs.values()) if note)
        if notes:
            with open(run.exec_dir.stderr, "ab") as f:
                f.write(notes.encode())


def _run_with_output(run: _Run, store: Any, wasi: Any, files: dict[str, BinaryIO]) -> RunResult:
    import wasmtime

    spec = run.job.spec.wasm
    assert spec is not None
    if run.outputs:
        stdout, stderr = run.outputs["stdout"], run.outputs["stderr"]
        wasi.stdout_custom = lambda data: stdout.write(files["stdout"], data)
        wasi.stderr_custom = lambda data: stderr.write(files["stderr"], data)
    else:
        wasi.stdout_file = str(run.exec_dir.stdout)
        wasi.stderr_file = str(run.exec_dir.stderr)
    wasi.preopen_dir(str(run.exec_dir.outputs), "/outputs")
    for mount in run.mounts:
        wasi.preopen_dir(str(mount.host_dir), mount.path, fs_mutable=False)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(run.engine)
    linker.define_wasi()
    exit_code, error = 0, ""
    try:
        instance = linker.instantiate(store, run.module)
        entry = instance.exports(store).get(spec.entry_point)
        if not isinstance(entry, wasmtime.Func):
            raise JobCausedError(f"the WASM module exports no function {spec.entry_point!r}")
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
        raise JobCausedError(f"the WASM module could not be instantiated: {str(exc).splitlines()[0]}") from None
    return _result(run, exit_code, error)
