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
