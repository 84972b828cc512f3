"""No job can crash, brick or escape a node: each test is one attack, run end to end against a real node
(in-process over real libp2p, real wasmtime, the real Docker engine), and after each the same node runs a
normal job."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest
import trio
import wasmtime

from bacalhau.cli.client import ApiClient
from bacalhau.compute.results import read_result, remove_tree
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import decode, decode_unixfs
from bacalhau.ipfs.exporter import export_tar
from bacalhau.ipfs.publish import publish_result
from bacalhau.ipfs.unixfs import T_DIRECTORY, cid_to_bytes
from bacalhau.models.job import WASM_INLINE_PREFIX
from bacalhau.node import Node
from tests.conftest import CliResult, run_cli

WASI_EXIT = '(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'
WASI_WRITE = '(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))'


def wasm(tmp_path: Path, name: str, wat: str) -> str:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return str(path)


def hello(tmp_path: Path) -> str:
    return wasm(tmp_path, "hello", HELLO)


HELLO = """(module %s
      (memory (export "memory") 1)
      (data (i32.const 16) "fine\\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))""" % WASI_WRITE


async def still_serves(node: Node, tmp_path: Path) -> None:
    """The node that took the bad job runs a normal one (a WASM job, or a Docker one with `docker`)."""
    done = await run_cli(node, "wasm", "run", hello(tmp_path))
    assert done.returncode == 0 and done.stdout == "fine\n", done.stderr


async def docker_still_serves(node: Node) -> None:
    done = await run_cli(node, "docker", "run", "bacalhau/busybox", "--", "echo", "fine")
    assert done.returncode == 0 and done.stdout == "fine\n", done.stderr


def failed_with(done: CliResult, text: str) -> None:
    """The job failed, the CLI said why in its status lines, and no traceback reached the user."""
    assert done.returncode != 0, done
    assert text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# -- one bad job fails one job ----------------------------------------------------------------------------

async def test_a_wasm_job_whose_entry_point_is_missing_fails_alone(single_node: Node, tmp_path: Path) -> None:
    done = await run_cli(single_node, "wasm", "run", "--entry-point", "nope", hello(tmp_path))
    failed_with(done, "exports no function 'nope'")
    await still_serves(single_node, tmp_path)


async def test_a_wasm_module_that_imports_what_wasi_lacks_fails_alone(single_node: Node, tmp_path: Path) -> None:
    module = wasm(tmp_path, "bad-import", """(module
      (import "wasi_snapshot_preview1" "no_such_call" (func (param i32)))
      (func (export "_start")))""")
    done = await run_cli(single_node, "wasm", "run", module)
    failed_with(done, "could not be instantiated")
    await still_serves(single_node, tmp_path)


@pytest.mark.parametrize("name, why", [("n" * 300, "names up to 255 bytes"), ("a\0b", "NUL character")])
async def test_an_inline_input_with_an_impossible_name_fails_alone(single_node: Node, tmp_path: Path,
                                                                   name: str, why: str) -> None:
    spec = {"engine": "wasm",
            "wasm": {"module": WASM_INLINE_PREFIX + base64.b64encode(wasmtime.wat2wasm(HELLO)).decode()},
            "inputs": [{"source": f"inline:{name};base64,{base64.b64encode(b'data').decode()}", "path": "/inputs"}]}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    done = await run_cli(single_node, "create", "--wait", str(spec_file))
    failed_with(done, why)
    await still_serves(single_node, tmp_path)


# -- what a Docker job leaves in /outputs -----------------------------------------------------------------

def job_id_of(done: CliResult) -> str:
    m = re.search(r"job ([0-9a-f-]{36}) submitted", done.stderr)
    assert m, done.stderr
    return m.group(1)


async def published(node: Node, job_id: str) -> dict[str, int]:
    """Every path of the job's published result (walked without recursion) and its UnixFS type."""
    job = await trio.to_thread.run_sync(ApiClient("127.0.0.1", node.api_port).job, job_id)
    refs = [e["result_ref"] for e in job["executions"] if e["result_ref"].startswith("ipfs://")]
    assert refs, job
    paths: dict[str, int] = {}
    stack = [("", cid_to_bytes(refs[0][len("ipfs://"):]))]
    while stack:
        rel, cid = stack.pop()
        data, links = decode(node.blockstore.get(cid))
        fs = decode_unixfs(data)
        paths[rel] = fs.type
        if fs.type == T_DIRECTORY:
            stack.extend((f"{rel}/{link.name}".lstrip("/"), link.cid) for link in links)
    return paths


@pytest.mark.docker
async def test_a_fifo_in_outputs_is_skipped_and_publishing_does_not_block(single_node: Node) -> None:
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--",
                         "sh", "-c", "mkfifo /outputs/f && echo made > /outputs/kept")
    assert done.returncode == 0, done.stderr
    assert "not published: outputs/f (a FIFO)" in done.stderr
    paths = await published(single_node, job_id_of(done))
    assert "outputs/kept" in paths and "outputs/f" not in paths
    await docker_still_serves(single_node)


@pytest.mark.docker
async def test_a_name_that_is_not_utf8_is_skipped_and_listed(single_node: Node) -> None:
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--",
                         "sh", "-c", "touch \"$(printf '/outputs/\\377x')\" && touch /outputs/ok")
    assert done.returncode == 0, done.stderr
    assert "not published: outputs/\\xffx (its name is not UTF-8)" in done.stderr
    paths = await published(single_node, job_id_of(done))
    assert sorted(p for p in paths if p.startswith("outputs/")) == ["outputs/ok"]
    await docker_still_serves(single_node)


@pytest.mark.docker
async def test_outputs_nested_1000_directories_deep_are_published(single_node: Node) -> None:
    script = "p=/outputs; i=0; while [ $i -lt 1000 ]; do p=$p/d; i=$((i+1)); done; mkdir -p $p && echo x > $p/leaf"
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    paths = await published(single_node, job_id_of(done))
    assert "outputs" + "/d" * 1000 + "/leaf" in paths
    # the fallback result path (a tar over get_result) walks it without recursion too
    execution = next((single_node.config.repo_dir / "results").iterdir())
    try:
        names = await tar_names(execution)
        assert "outputs" + "/d" * 1000 + "/leaf" in names
        await docker_still_serves(single_node)
    finally:
        # Python 3.11's shutil.rmtree (pytest's tmp_path cleanup) recurses: too deep for it
        await trio.to_thread.run_sync(remove_tree, execution)


@pytest.mark.docker
async def test_a_sparse_terabyte_in_outputs_is_refused_by_size_not_hashed(single_node: Node) -> None:
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--", "truncate", "-s", str(1 << 40),
                         "/outputs/big", timeout=30)
    failed_with(done, "over this node's limit of 10737418240 bytes")
    await docker_still_serves(single_node)


async def tar_names(execution_dir: Path) -> list[str]:
    chunks = [chunk async for chunk in read_result(execution_dir, "tar")]
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        return tar.getnames()


async def test_devices_fifos_and_sockets_in_outputs_are_never_opened(tmp_path: Path) -> None:
    """Unit level (the device nodes are made here as root: the job sandbox drops MKNOD): /dev/random would
    never end if read, a FIFO would block its opener."""
    root = tmp_path / "execution"
    outputs = root / "outputs"
    outputs.mkdir(parents=True)
    (root / "stdout").write_bytes(b"out")
    (outputs / "kept").write_bytes(b"kept")
    os.mknod(outputs / "random", stat.S_IFCHR | 0o600, os.makedev(1, 8))
    os.mknod(outputs / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    os.mknod(outputs / "sock", stat.S_IFSOCK | 0o600)
    os.mkfifo(outputs / "fifo")
    os.symlink("/dev/random", outputs / "link")
    store = Blockstore(tmp_path / "ipfs")
    try:
        with trio.fail_after(20):
            cid = await trio.to_thread.run_sync(publish_result, root, store, 1 << 20, abandon_on_cancel=True)
            names = await tar_names(root)
        tar = export_tar(cid_to_bytes(cid), store)
        with tarfile.open(tar) as t:
            exported = {m.name: m.type for m in t.getmembers()}
        tar.unlink()
    finally:
        store.close()
    assert exported == {"stdout": tarfile.REGTYPE, "outputs": tarfile.DIRTYPE, "outputs/kept": tarfile.REGTYPE,
                        "outputs/link": tarfile.SYMTYPE}
    assert sorted(names) == ["outputs", "outputs/kept", "outputs/link", "stdout"]
