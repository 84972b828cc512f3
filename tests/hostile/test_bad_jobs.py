"""No job can crash, brick or escape a node: each test is one attack, run end to end against a real node
(in-process over real libp2p, real wasmtime, the real Docker engine), and after each the same node runs a
normal job."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import wasmtime

from bacalhau.cli.client import ApiClient
from bacalhau.compute.results import read_result, remove_tree
from bacalhau.errors import ExecutorError
from bacalhau.executors import wasm as wasm_executor
from bacalhau.executors.types import ExecutionDir
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import decode, decode_unixfs
from bacalhau.ipfs.exporter import export_tar
from bacalhau.ipfs.publish import ResultTooLarge, TooManyEntries, publish_result, scan_result, walk_result
from bacalhau.ipfs.unixfs import T_DIRECTORY, cid_to_bytes
from bacalhau.models import Engine, Job, JobSpec, WasmSpec
from bacalhau.models.job import WASM_INLINE_PREFIX
from bacalhau.node import Node
from tests.conftest import CliResult, node_config, run_cli

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

@pytest.mark.slow
async def test_a_wasm_job_whose_entry_point_is_missing_fails_alone(single_node: Node, tmp_path: Path) -> None:
    done = await run_cli(single_node, "wasm", "run", "--entry-point", "nope", hello(tmp_path))
    failed_with(done, "exports no function 'nope'")
    await still_serves(single_node, tmp_path)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.docker
async def test_a_name_that_is_not_utf8_is_skipped_and_listed(single_node: Node) -> None:
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--",
                         "sh", "-c", "touch \"$(printf '/outputs/\\377x')\" && touch /outputs/ok")
    assert done.returncode == 0, done.stderr
    assert "not published: outputs/\\xffx (its name is not UTF-8)" in done.stderr
    paths = await published(single_node, job_id_of(done))
    assert sorted(p for p in paths if p.startswith("outputs/")) == ["outputs/ok"]
    await docker_still_serves(single_node)


@pytest.mark.slow
@pytest.mark.docker
async def test_outputs_nested_1000_directories_deep_are_published(single_node: Node) -> None:
    script = "p=/outputs; i=0; while [ $i -lt 1000 ]; do p=$p/d; i=$((i+1)); done; mkdir -p $p && echo x > $p/leaf"
    results = single_node.config.repo_dir / "results"
    try:
        done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--", "sh", "-c", script)
        assert done.returncode == 0, done.stderr
        paths = await published(single_node, job_id_of(done))
        assert "outputs" + "/d" * 1000 + "/leaf" in paths
        # the fallback result path (a tar over get_result) walks it without recursion too
        execution = next(results.iterdir())
        names = await tar_names(execution)
        assert "outputs" + "/d" * 1000 + "/leaf" in names
        # the result as another job's ipfs:// input: it runs, or (while UnixFS export recurses) fails alone
        ref = next(e["result_ref"] for e in (await trio.to_thread.run_sync(
            ApiClient("127.0.0.1", single_node.api_port).job, job_id_of(done)))["executions"] if e["result_ref"])
        reader = await run_cli(single_node, "docker", "run", "-i", f"{ref}:/in", "bacalhau/busybox", "--",
                               "cat", "/in/outputs" + "/d" * 1000 + "/leaf")
        assert reader.stdout == "x\n" or ("could not run" in reader.stderr and "Traceback" not in reader.stderr)
        # and the retention pass that deletes it later does so without recursion
        single_node.retention.retention = 1e-6
        assert (await single_node.retention.collect())[0] >= 1
        assert not execution.exists()
        await docker_still_serves(single_node)
    finally:
        # Python 3.11's shutil.rmtree (pytest's tmp_path cleanup) recurses: too deep for it
        await trio.to_thread.run_sync(remove_tree, results)


@pytest.mark.docker
async def test_a_sparse_terabyte_in_outputs_is_refused_by_size_not_hashed(single_node: Node) -> None:
    done = await run_cli(single_node, "docker", "run", "bacalhau/busybox", "--", "truncate", "-s", str(1 << 40),
                         "/outputs/big", timeout=30)
    failed_with(done, "over this node's limit of 10737418240 bytes")
    assert "its outputs were deleted from the node" in done.stderr
    assert not list((single_node.config.repo_dir / "results").glob("*/outputs/big"))
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
    os.symlink(b"\xff", bytes(outputs / "bad-target"))
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
    skipped = dict(scan_result(root).skipped)
    assert skipped == {"outputs/random": "a character device", "outputs/loop": "a block device",
                       "outputs/sock": "a socket", "outputs/fifo": "a FIFO",
                       "outputs/bad-target": "its target is not UTF-8"}


def test_a_result_with_too_many_entries_is_refused_while_listing(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    for i in range(10):
        (tmp_path / "outputs" / str(i)).touch()
    with pytest.raises(TooManyEntries, match="more than 5 files"):
        list(walk_result(tmp_path, max_entries=5))


# -- WASM -------------------------------------------------------------------------------------------------

async def test_a_wasm_job_that_asks_for_no_memory_is_capped_by_the_node(single_node: Node, tmp_path: Path) -> None:
    """memory.grow by 1 GiB: refused under the default --wasm-memory-limit (512 MiB)."""
    module = wasm(tmp_path, "grow", """(module %s %s
      (memory (export "memory") 1)
      (data (i32.const 16) "refused\\n")
      (data (i32.const 32) "grown!!\\n")
      (func (export "_start")
        (i32.store (i32.const 0) (select (i32.const 16) (i32.const 32)
                                         (i32.eq (memory.grow (i32.const 16384)) (i32.const -1))))
        (i32.store (i32.const 4) (i32.const 8))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))""" % (WASI_WRITE, WASI_EXIT))
    done = await run_cli(single_node, "wasm", "run", module)
    assert done.returncode == 0 and done.stdout == "refused\n", done
    await still_serves(single_node, tmp_path)


SLEEPER = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))              ;; a clock subscription
    (i32.store (i32.const 16) (i32.const 1))              ;; on the monotonic clock
    (i64.store (i32.const 24) (i64.const 60000000000))    ;; in 60 s, relative
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"""


@pytest.mark.slow
async def test_a_wasm_job_asleep_inside_a_wasi_call_is_stopped_by_its_timeout(single_node: Node,
                                                                              tmp_path: Path) -> None:
    """poll_oneoff asked to sleep a minute: epoch interruption cannot reach into a host call, the runner
    thread is abandoned and the job fails with its timeout at once."""
    module = wasm(tmp_path, "sleeper", SLEEPER)
    done = await run_cli(single_node, "wasm", "run", "--timeout", "1", module, timeout=20)
    failed_with(done, "timed out after 1s (stopped inside a blocking WASI call)")
    await still_serves(single_node, tmp_path)


READ_ONLY_PROBE = """(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $unlink (param i32 i32 i32) (result i32)))
  %s %s
  (memory (export "memory") 1)
  (data (i32.const 100) "data.txt")
  (data (i32.const 120) "new.txt")
  (data (i32.const 140) "newdir")
  (data (i32.const 160) "PWNED")
  (func (export "_start") (local $bad i32)
    ;; fd 4 is /inputs (fd 3 is /outputs). Reading data.txt works: the probe looks at the right place
    (if (call $open (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 0)
                    (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (local.set $bad (i32.const 16))))
    ;; opening it for writing, truncated
    (if (i32.eqz (call $open (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 8)
                             (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (local.set $bad (i32.or (local.get $bad) (i32.const 1)))
            (i32.store (i32.const 300) (i32.const 160)) (i32.store (i32.const 304) (i32.const 5))
            (drop (call $fd_write (i32.load (i32.const 200)) (i32.const 300) (i32.const 1) (i32.const 308)))))
    ;; creating a file, a directory; removing the input
    (if (i32.eqz (call $open (i32.const 4) (i32.const 0) (i32.const 120) (i32.const 7) (i32.const 1)
                             (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (local.set $bad (i32.or (local.get $bad) (i32.const 2)))))
    (if (i32.eqz (call $mkdir (i32.const 4) (i32.const 140) (i32.const 6)))
      (then (local.set $bad (i32.or (local.get $bad) (i32.const 4)))))
    (if (i32.eqz (call $unlink (i32.const 4) (i32.const 100) (i32.const 8)))
      (then (local.set $bad (i32.or (local.get $bad) (i32.const 8)))))
    (call $proc_exit (local.get $bad))))""" % (WASI_WRITE, WASI_EXIT)


async def test_a_wasm_job_cannot_write_create_or_remove_anything_under_its_inputs(single_node: Node,
                                                                                   tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(b"original\n")
    done = await run_cli(single_node, "wasm", "run", "-i", str(data), wasm(tmp_path, "probe", READ_ONLY_PROBE))
    # the exit code is a bit mask of what succeeded that must not have (16: the probe could not read)
    assert done.returncode == 0, done
    [input_dir] = (single_node.config.repo_dir / "results").glob("*/inputs/0")
    assert sorted(p.name for p in input_dir.iterdir()) == ["data.txt"]
    assert (input_dir / "data.txt").read_bytes() == b"original\n"
    await still_serves(single_node, tmp_path)


# -- the node's surroundings fail under a running job -------------------------------------------------------

DOCKERD = ["dockerd", "--bridge=none", "--iptables=false"]      # as scripts/setup.sh starts it
DOCKERD_LOG = Path("/var/log/bacalhau-dockerd.log")


def docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def start_dockerd() -> None:
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(DOCKERD, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not docker_up():
        assert time.monotonic() < deadline, "dockerd did not come back"
        time.sleep(0.2)


@contextmanager
def docker_engine_always_left_running() -> Iterator[None]:
    try:
        yield
    finally:
        if not docker_up():
            pid = dockerd_pid()
            deadline = time.monotonic() + 60
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            start_dockerd()


def dockerd_pid() -> int:
    pid_file = Path("/var/run/docker.pid")
    return int(pid_file.read_text()) if pid_file.exists() else 0


def containers_of(job_id: str, *flags: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-q", *flags, "--filter", f"label=bacalhau.job_id={job_id}"],
                          capture_output=True, text=True, check=False).stdout.split()


def stop_dockerd() -> None:
    """SIGTERM, as a service manager stops it; returns once it has exited."""
    pid = dockerd_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.1)


@pytest.mark.docker
@pytest.mark.slow
async def test_the_docker_engine_restarted_under_a_running_job_fails_that_job_only(single_node: Node) -> None:
    """dockerd takes ~10 s to stop: this test is slower than the others. Other users of the engine see it go."""
    if not await trio.to_thread.run_sync(dockerd_pid):
        pytest.skip("dockerd was not started by scripts/setup.sh here (no /var/run/docker.pid)")
    # the job ends at once on the engine's SIGTERM, so the engine does not wait 10 s for it
    started = await run_cli(single_node, "docker", "run", "--id-only", "bacalhau/busybox", "--",
                            "sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done")
    job_id = started.stdout.strip()
    client = ApiClient("127.0.0.1", single_node.api_port)
    with docker_engine_always_left_running():
        with trio.fail_after(30):
            while not await trio.to_thread.run_sync(containers_of, job_id):
                await trio.sleep(0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, stop_dockerd)
            with trio.fail_after(60):
                while (job := await trio.to_thread.run_sync(client.job, job_id))["state"] != "failed":
                    await trio.sleep(0.1)
        await trio.to_thread.run_sync(start_dockerd)
    assert "the Docker engine" in job["reason"] and "stopped or restarted" in job["reason"], job["reason"]
    await trio.run_process(["docker", "rm", "-f", *await trio.to_thread.run_sync(containers_of, job_id, "-a")],
                           capture_stdout=True, capture_stderr=True, check=False)
    await docker_still_serves(single_node)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.docker
async def test_a_job_that_fills_the_disk_fails_saying_so_and_the_node_lives(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with small_disk(repo, "8m"):
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(node_config(repo)).run)
            done = await run_cli(node, "docker", "run", "bacalhau/busybox", "--",
                                 "dd", "if=/dev/zero", "of=/outputs/big", "bs=1048576", "count=20")
            failed_with(done, "disk is full")
            # the node freed what the job wrote: the next job has room
            assert os.statvfs(repo).f_bavail > 0
            await docker_still_serves(node)
            nursery.cancel_scope.cancel()


async def test_a_bitswap_message_that_does_not_decode_fails_that_peer_alone(single_node: Node,
                                                                            tmp_path: Path) -> None:
    """An IPFS peer (no swarm key needed) sends a big frame (decoded in a worker task) that is not protobuf."""
    from bacalhau.ipfs.bitswap import PROTOCOL, _frame
    from bacalhau.p2p.host import P2PHost

    assert single_node.ipfs_host is not None
    async with trio.open_nursery() as nursery:
        peer = await nursery.start(P2PHost(key_path=tmp_path / "peer.key", listen_host="127.0.0.1", listen_port=0,
                                           pubsub=False).run)
        node_id = await peer.connect(single_node.ipfs_host.listen_addrs[0])
        stream = await peer.open_stream(node_id, PROTOCOL)
        garbage = b"\xff" * 5000
        await stream.write(_frame(garbage))
        await stream.close()
        nursery.cancel_scope.cancel()
    await still_serves(single_node, tmp_path)


@pytest.mark.docker
@pytest.mark.slow
def test_serve_limits_take_effect_in_a_real_serve(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = served("limited", "--max-result-size", "2000", "--wasm-memory-limit", "1Mi").start()
    node.wait_ready()
    done = node.cli("docker", "run", "bacalhau/busybox", "--", "sh", "-c", "head -c 3000 /dev/zero > /outputs/f")
    assert done.returncode != 0 and "over this node's limit of 2000 bytes" in done.stderr, done.stderr
    module = wasm(tmp_path, "two-mib", '(module (memory (export "memory") 32) (func (export "_start")))')
    done = node.cli("wasm", "run", module)
    assert done.returncode != 0 and "could not be instantiated" in done.stderr, done.stderr
    done = node.cli("wasm", "run", hello(tmp_path))
    assert done.returncode == 0 and done.stdout == "fine\n", done.stderr
    bad = node.cli("serve", "--max-result-size", "lots")
    assert bad.returncode == 2 and "not a size: 'lots'" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_a_file_that_holds_more_than_its_size_says_is_bounded_while_hashing(tmp_path: Path) -> None:
    """A /proc file bind-mounted into outputs: lstat says 0 bytes (the size check before hashing passes), reading
    gives kilobytes; the budget counted while hashing stops it."""
    root = tmp_path / "execution"
    (root / "outputs").mkdir(parents=True)
    target = root / "outputs" / "cpuinfo"
    target.touch()
    mounted = subprocess.run(["mount", "--bind", "/proc/cpuinfo", str(target)], capture_output=True, text=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    store = Blockstore(tmp_path / "ipfs")
    try:
        assert scan_result(root).size == 0
        with pytest.raises(ResultTooLarge, match="over this node's limit of 1000 bytes"):
            publish_result(root, store, 1000)
    finally:
        store.close()
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.slow
async def test_wasm_runs_stuck_in_host_calls_are_counted_and_refuse_more_until_they_return(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executor level, with the cap lowered to 1 for the test: one abandoned runner thread (asleep 3 s in
    poll_oneoff) makes the next WASM run fail with a clear reason until that thread has ended."""
    monkeypatch.setattr(wasm_executor, "MAX_STUCK_RUNS", 1)
    sleeper = wasmtime.wat2wasm(SLEEPER.replace("60000000000", "3000000000"))
    executor = wasm_executor.WasmExecutor()

    def job(module: bytes) -> Job:
        return Job(spec=JobSpec(engine=Engine.WASM, timeout=0.3,
                                wasm=WasmSpec(module=wasm_executor.encode_module(module))))

    first = ExecutionDir(tmp_path / "first")
    first.create()
    await executor.start("first", job(sleeper), first)
    with trio.fail_after(10):
        result = await executor.wait("first")
    assert result.exit_code == -1 and "stopped inside a blocking WASI call" in result.error
    second = ExecutionDir(tmp_path / "second")
    second.create()
    with pytest.raises(ExecutorError, match="still inside blocking WASI calls"):
        await executor.start("second", job(wasmtime.wat2wasm(HELLO)), second)
    with trio.fail_after(15):
        while True:
            try:
                await executor.start("second", job(wasmtime.wat2wasm(HELLO)), second)
                break
            except ExecutorError:
                await trio.sleep(0.1)
    assert (await executor.wait("second")).exit_code == 0
