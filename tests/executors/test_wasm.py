"""The WASM executor against real wasmtime; modules are built from WAT text."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import wasmtime

from bacalhau.errors import ExecutorError
from bacalhau.executors.types import ExecutionDir
from bacalhau.executors.wasm import WasmExecutor, encode_module
from bacalhau.models import Engine, Job, JobSpec, WasmSpec

WASI = '(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))' \
       '(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'


def hello(text: str = "hello wasm\n", exit_code: int = 0) -> bytes:
    """A module that writes `text` to stdout, then calls proc_exit(exit_code)."""
    data = text.encode()
    escaped = "".join("\\%02x" % b for b in data)
    wat = """(module %s
      (memory (export "memory") 1)
      (data (i32.const 16) "%s")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const %d))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (call $proc_exit (i32.const %d))))""" % (WASI, escaped, len(data), exit_code)
    return wasmtime.wat2wasm(wat)


FOREVER = wasmtime.wat2wasm('(module (func (export "_start") (loop $l (br $l))))')


def job(module: bytes, **kw: object) -> Job:
    return Job(spec=JobSpec(engine=Engine.WASM, wasm=WasmSpec(module=encode_module(module)), **kw))  # type: ignore[arg-type]


async def run(module: bytes, tmp_path: Path, **kw: object) -> tuple[object, ExecutionDir]:
    ex = WasmExecutor()
    d = ExecutionDir(tmp_path / "exec")
    d.create()
    await ex.start("e1", job(module, **kw), d)
    return await ex.wait("e1"), d


async def test_stdout_and_exit_code_from_proc_exit(tmp_path: Path) -> None:
    result, d = await run(hello("hi there\n", exit_code=3), tmp_path)
    assert result.exit_code == 3 and not result.error
    assert d.stdout.read_bytes() == b"hi there\n"
    assert d.exit_code.read_text() == "3"


async def test_a_module_that_never_ends_is_stopped_by_its_timeout(tmp_path: Path) -> None:
    with trio.fail_after(10):
        result, _ = await run(FOREVER, tmp_path, timeout=0.5)
    assert result.exit_code == -1 and "timed out after 0.5s" in result.error


async def test_cancel_interrupts_inside_the_engine(tmp_path: Path) -> None:
    ex = WasmExecutor()
    d = ExecutionDir(tmp_path / "exec")
    d.create()
    await ex.start("e1", job(FOREVER), d)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex.wait, "e1")
        await trio.sleep(0.2)
        with trio.fail_after(5):
            await ex.cancel("e1")
    assert d.exit_code.read_text() == "-1"


async def test_a_module_that_does_not_compile_is_an_executor_error(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="does not compile"):
        await run(b"\x00asm-not-really", tmp_path)


def flood(writes: int, size: int = 1000) -> bytes:
    """A module that writes `size` bytes of 'y' to stdout `writes` times."""
    wat = """(module %s
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (memory.fill (i32.const 16) (i32.const 121) (i32.const %d))
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const %d))
        (loop $l
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const %d))))))""" % (WASI, size, size, writes)
    return wasmtime.wat2wasm(wat)


async def test_a_module_flooding_stdout_is_cut_at_the_nodes_output_cap_and_told(tmp_path: Path) -> None:
    ex = WasmExecutor(max_output=4096)
    d = ExecutionDir(tmp_path / "exec")
    d.create()
    await ex.start("e1", job(flood(writes=100)), d)
    with trio.fail_after(20):
        result = await ex.wait("e1")
    assert result.exit_code == 0 and result.stdout_truncated and not result.stderr_truncated
    assert d.stdout.read_bytes() == b"y" * 4096
    assert "stdout was truncated at 4096 bytes" in d.stderr.read_text()
    assert "95904 more bytes were dropped" in d.stderr.read_text()


async def test_a_module_under_the_cap_keeps_all_its_output(tmp_path: Path) -> None:
    ex = WasmExecutor(max_output=1_000_000)
    d = ExecutionDir(tmp_path / "exec")
    d.create()
    await ex.start("e1", job(flood(writes=100)), d)
    result = await ex.wait("e1")
    assert result.stdout_bytes == 100_000 and not result.stdout_truncated
    assert d.stdout.read_bytes() == b"y" * 100_000 and d.stderr.read_bytes() == b""


def test_a_wasm_job_that_asks_no_memory_is_counted_as_what_its_module_may_take() -> None:
    from bacalhau.compute.capacity import effective
    from bacalhau.config import JobLimits
    from bacalhau.models import Resources

    limits = JobLimits(default_memory=100 * 1000**2, wasm_memory=64 * 1024**2)
    assert effective(Resources(), limits, Engine.WASM).memory == 64 * 1024**2     # the executor's cap
    assert effective(Resources(), limits, Engine.DOCKER).memory == 100 * 1000**2  # the container's limit
    assert effective(Resources(memory=10**6), limits, Engine.WASM).memory == 10**6
