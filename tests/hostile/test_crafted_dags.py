"""Crafted DAGs, as an IPFS peer or a rogue node would serve them, built with our dag-pb/UnixFS encoders:
symlinks that point out of the export with an entry of the same name behind them, duplicate names, `..`,
slashes, NUL and non-UTF-8 names, and diamonds (one child linked twice, 40 levels deep). They are refused or
kept as links, nothing is written outside the destination, a repeated child costs one read, and the node
lives. End to end they come from real Kubo (blocks written into its flatfs repo, served by its bitswap)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bacalhau.errors import ProtocolError
from bacalhau.ipfs.blockstore import multihash_of
from bacalhau.ipfs.exporter import Limits, cat, export, export_into, export_tar
from bacalhau.ipfs.unixfs import (
    T_DIRECTORY,
    T_FILE,
    T_SYMLINK,
    _bytes_field,
    _uint_field,
    cid_str,
    make_cid,
    unixfs_data,
)
from bacalhau.node import Node
from bacalhau.testing.kubo import Kubo
from tests.conftest import node_config, run_cli

IMAGE = "bacalhau/busybox:latest"


class Dag:
    """Blocks by CID, with a count of reads: a BlockGetter."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self.gets = 0

    def get(self, cid: bytes) -> bytes:
        self.gets += 1
        return self.blocks[cid]

    def put(self, block: bytes) -> bytes:
        cid = make_cid(block, 0x70, 0)
        self.blocks[cid] = block
        return cid

    def node(self, data: bytes, links: list[tuple[bytes | str, bytes]]) -> bytes:
        """dag-pb with names as given (bytes may be anything, our encoder would refuse them)."""
        out = b""
        for name, cid in links:
            raw = name.encode() if isinstance(name, str) else name
            out += _bytes_field(2, _bytes_field(1, cid) + _bytes_field(2, raw) + _uint_field(3, 1))
        return self.put(out + _bytes_field(1, data))

    def file(self, data: bytes) -> bytes:
        return self.node(unixfs_data(T_FILE, data, len(data)), [])

    def symlink(self, target: str) -> bytes:
        return self.node(unixfs_data(T_SYMLINK, target.encode()), [])

    def dir(self, *entries: tuple[bytes | str, bytes]) -> bytes:
        return self.node(unixfs_data(T_DIRECTORY), list(entries))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A directory outside every export, which an attack would write into."""
    t = tmp_path / "target-dir"
    t.mkdir()
    (t / "keep").write_text("unchanged\n")
    return t


def untouched(target: Path) -> bool:
    return sorted(p.name for p in target.iterdir()) == ["keep"] and (target / "keep").read_text() == "unchanged\n"


def crafted(dag: Dag, target: Path) -> dict[str, bytes]:
    evil = dag.file(b"pwned\n")
    return {
        # a link out, then a directory of the same name holding a file: written through the link before
        "link-then-dir": dag.dir(("x", dag.symlink(str(target))), ("x", dag.dir(("evil", evil)))),
        # a link out, then a file of the same name: opened through the link before
        "link-then-file": dag.dir(("x", dag.symlink(str(target / "keep"))), ("x", evil)),
        "dotdot": dag.dir(("..", dag.dir(("evil", evil)))),
        "relative-escape": dag.dir(("a", dag.symlink("../../../..")), ("a", dag.dir(("evil", evil)))),
        "slash": dag.dir((f"../{target.name}/evil", evil)),
        "absolute": dag.dir((str(target / "evil"), evil)),
        "dot": dag.dir((".", dag.dir(("evil", evil)))),
        "empty": dag.dir(("", evil)),
        "nul": dag.dir(("evil\0.txt", evil)),
        "not-utf8": dag.dir((b"\xffevil", evil)),
        "twice": dag.dir(("f", evil), ("f", evil)),
    }


def test_crafted_directories_are_refused_naming_the_entry_and_nothing_lands_outside(tmp_path: Path,
                                                                                    target: Path) -> None:
    dag = Dag()
    for label, cid in crafted(dag, target).items():
        dest = tmp_path / "out" / label
        dest.parent.mkdir(exist_ok=True)
        with pytest.raises(ProtocolError) as err:
            export(cid, dag, dest)
        assert "\n" not in str(err.value) and ("name" in str(err.value) or "twice" in str(err.value)), label
        assert not dest.exists(), label       # refused before a byte was written
        assert untouched(target), label
        with pytest.raises(ProtocolError):
            export_tar(cid, dag)
        inputs = tmp_path / "inputs" / label
        inputs.mkdir(parents=True)
        with pytest.raises(ProtocolError):
            export_into(cid, dag, inputs, cid_str(cid))
        assert untouched(target) and not list(inputs.iterdir()), label


def test_a_symlink_pointing_out_is_kept_as_a_link_and_never_followed(tmp_path: Path, target: Path) -> None:
    dag = Dag()
    root = dag.dir(("out", dag.symlink(str(target))), ("up", dag.symlink("../../..")),
                   ("z", dag.dir(("f", dag.file(b"in\n")))))
    export(root, dag, tmp_path / "dest")
    assert os.readlink(tmp_path / "dest" / "out") == str(target)
    assert os.readlink(tmp_path / "dest" / "up") == "../../.."
    assert (tmp_path / "dest" / "z" / "f").read_bytes() == b"in\n"
    assert untouched(target)
    # a lone symlink as the whole content
    export(dag.symlink(str(target)), dag, tmp_path / "lone")
    assert os.readlink(tmp_path / "lone") == str(target) and untouched(target)


def diamond_dir(dag: Dag, depth: int) -> bytes:
    cid = dag.file(b"leaf\n")
    for _ in range(depth):
        cid = dag.dir(("a", cid), ("b", cid))     # two names, one CID: legal
    return cid


def diamond_file(dag: Dag, depth: int, leaf: bytes) -> bytes:
    cid = dag.file(leaf)
    size = len(leaf)
    for _ in range(depth):
        size *= 2
        cid = dag.node(unixfs_data(T_FILE, None, size, (size // 2, size // 2)), [("", cid), ("", cid)])
    return cid


def test_a_diamond_dag_40_deep_costs_a_read_per_block_not_two_to_the_40(tmp_path: Path) -> None:
    dag = Dag()
    root = diamond_dir(dag, 40)
    with pytest.raises(ProtocolError, match="entries"):
        export(root, dag, tmp_path / "d")
    assert dag.gets <= 45 and not (tmp_path / "d").exists()
    for leaf in (b"x" * 100, b""):        # a file of 2^40 copies of a chunk, or of nothing at all
        dag.gets = 0
        root = diamond_file(dag, 40, leaf)
        with pytest.raises(ProtocolError, match="bytes|blocks"):
            export(root, dag, tmp_path / f"f{len(leaf)}")
        with pytest.raises(ProtocolError, match="bytes|blocks"):
            next(cat(root, dag))
        assert dag.gets <= 90


def test_a_small_diamond_is_legal_and_every_copy_is_written(tmp_path: Path) -> None:
    dag = Dag()
    export(diamond_dir(dag, 3), dag, tmp_path / "d")
    assert len([p for p in (tmp_path / "d").rglob("*") if p.is_file()]) == 8
    assert (tmp_path / "d" / "b" / "a" / "b").read_bytes() == b"leaf\n"
    root = diamond_file(dag, 3, b"ab")
    assert b"".join(cat(root, dag)) == b"ab" * 8
    with pytest.raises(ProtocolError, match="bytes"):
        export(root, dag, tmp_path / "capped", Limits(max_bytes=15))


async def test_fetching_a_held_diamond_walks_each_block_once(tmp_path: Path) -> None:
    dag = Dag()
    root = diamond_dir(dag, 40)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node")).run)
        node.blockstore.put_many(list(dag.blocks.items()))
        with trio.fail_after(20):       # 2^40 wants before
            await node.content.fetch_cid(root)
        nursery.cancel_scope.cancel()


# -- end to end, from real Kubo ---------------------------------------------------------------------------

@pytest.fixture
def kubo(tmp_path: Path) -> Iterator[Kubo]:
    with Kubo.start(tmp_path / "kubo") as k:
        yield k


def kubo_put(kubo: Kubo, dag: Dag) -> None:
    """Blocks straight into Kubo's flatfs (blocks/<next-to-last 2>/<base32 multihash>.data): the kubo-python
    library has no `block put`. Kubo reads a block it never saw from disk, then serves it over bitswap."""
    for cid, block in dag.blocks.items():
        key = base64.b32encode(multihash_of(cid)).decode().rstrip("=")
        shard = kubo.workdir / "repo" / "blocks" / key[-3:-1]
        shard.mkdir(exist_ok=True)
        tmp = shard / f".{key}.tmp"
        tmp.write_bytes(block)
        tmp.rename(shard / f"{key}.data")


@pytest.mark.docker
@pytest.mark.slow
async def test_crafted_dags_from_kubo_fail_one_line_through_get_inputs_and_results(
        tmp_path: Path, kubo: Kubo, target: Path) -> None:
    dag = Dag()
    attacks = crafted(dag, target)
    kept = dag.dir(("out", dag.symlink(str(target))), ("stdout", dag.file(b"hi\n")))
    wide_dir, wide_file = diamond_dir(dag, 40), diamond_file(dag, 40, b"x" * 100)
    await trio.to_thread.run_sync(kubo_put, kubo, dag)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node", ipfs_swarm_addrs=(kubo.addrs[0],))).run)
        for label in ("link-then-dir", "link-then-file", "relative-escape", "dotdot", "not-utf8", "twice"):
            cid = cid_str(attacks[label])
            got = await run_cli(node, "ipfs", "get", cid, "-o", str(tmp_path / f"get-{label}"))
            assert got.returncode != 0 and "Traceback" not in got.stderr, (label, got.stderr)
            assert len(got.stderr.strip().splitlines()) == 1 and ("name" in got.stderr or "twice" in got.stderr), got.stderr
            assert not (tmp_path / f"get-{label}").exists() and untouched(target), label
        # a link out is a link, in the node's tar and in what the CLI unpacks
        got = await run_cli(node, "ipfs", "get", cid_str(kept), "-o", str(tmp_path / "kept"))
        assert got.returncode == 0, got.stderr
        assert os.readlink(tmp_path / "kept" / "out") == str(target) and untouched(target)

        # diamonds 40 deep through the API: fetched a block once each, refused by the caps in one line
        with trio.fail_after(60):
            assert await node.bitswap.fetch(wide_dir, timeout=30) == 41      # each distinct block once
            got = await run_cli(node, "ipfs", "get", cid_str(wide_dir), "-o", str(tmp_path / "wide"))
            assert got.returncode != 0 and "export limit" in got.stderr and "Traceback" not in got.stderr
            got = await run_cli(node, "ipfs", "cat", cid_str(wide_file))
            assert got.returncode != 0 and "export limit" in got.stderr and got.stdout == "", got.stderr
        assert not (tmp_path / "wide").exists()

        # an ipfs:// input: the job fails with the reason; nothing lands outside
        cid = cid_str(attacks["link-then-dir"])
        job = await run_cli(node, "docker", "run", "-i", f"ipfs://{cid}:/in", IMAGE, "--", "ls", "/in")
        assert job.returncode == 1 and "twice" in job.stderr and "Traceback" not in job.stderr, job.stderr
        assert untouched(target)

        # a result download of a crafted result: refused by its root's entries before export
        with pytest.raises(ProtocolError, match="entries a result does not have"):
            await node.content.result_tar(cid_str(kept))
        with pytest.raises(ProtocolError):
            await node.content.result_tar(cid_str(attacks["twice"]))
        assert untouched(target)

        ok = await run_cli(node, "docker", "run", IMAGE, "--", "echo", "alive")
        assert ok.returncode == 0 and ok.stdout == "alive\n", ok.stderr
        assert json.loads((await run_cli(node, "ipfs", "id")).stdout)["ID"]
        nursery.cancel_scope.cancel()


async def test_a_result_reference_that_is_not_ipfs_cid_fails_the_execution(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A rogue compute node reporting a made-up reference: here our own compute node is made to publish one
    (a rogue node of another build cannot be run here), and the requester refuses to record it."""
    import bacalhau.compute.publishing
    from bacalhau.executors.noop import NoopExecutor
    from bacalhau.models import Engine, JobSpec, JobState, NoopSpec
    from bacalhau.node import NodeDeps

    monkeypatch.setattr(bacalhau.compute.publishing, "publish_results", lambda items, *a, **kw: ["baaaaaaaa"] * len(items))
    cfg = node_config(tmp_path / "node", max_attempts=1, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(cfg, NodeDeps(executors={Engine.NOOP: NoopExecutor()})).run)
        assert node.requester is not None
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
        with trio.fail_after(20):
            while not (done := await node.requester.store.get_job(job.id)).state.terminal:
                await node.requester.wait_for_change(job.id, 1.0)
        assert done.state == JobState.FAILED
        assert any("result reference" in e.reason for e in done.executions), [e.reason for e in done.executions]
        assert all(e.result_ref == "" for e in done.executions)
        nursery.cancel_scope.cancel()


def test_result_references_parse_as_ipfs_cids_only() -> None:
    from bacalhau.ipfs.result_ref import parse_result_ref

    good = cid_str(make_cid(b"x", 0x70, 0))
    assert parse_result_ref(f"ipfs://{good}") == make_cid(b"x", 0x70, 0)
    for bad in ("", "ipfs://", f"ipfs://{good}/../x", f"file://{good}", "ipfs://baaaaaaaa", "ipfs://Qm0OIl",
                f"ipfs://{good}\n", f"https://example.com/{good}", "x" * 1000):
        with pytest.raises(ProtocolError):
            parse_result_ref(bad)


@pytest.mark.docker
@pytest.mark.slow
async def test_a_diamond_from_the_external_ipfs_node_is_fetched_a_block_once(tmp_path: Path) -> None:
    """--ipfs-connect: js-ipfs (the RPC API's stand-in for Kubo here) holds a diamond 40 deep; our node's
    remote fetch asks each of its 41 blocks once (it asked a repeated child twice, then lost it: KeyError)."""
    from bacalhau.testing.jsipfs import JsIpfs

    dag = Dag()
    root = diamond_dir(dag, 40)
    with JsIpfs.start(tmp_path / "js-ipfs") as js:
        for block in dag.blocks.values():
            await trio.to_thread.run_sync(lambda b=block: js.rpc(
                "block/put", files={"file": b}, format="dag-pb", mhtype="sha2-256", version=0))
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(Node(node_config(tmp_path / "node", ipfs_connect=js.api_maddr)).run)
            with trio.fail_after(60):
                assert await node.remote_ipfs.fetch(root) == len(dag.blocks) == 41
            got = await run_cli(node, "ipfs", "get", cid_str(root), "-o", str(tmp_path / "wide"))
            assert got.returncode != 0 and "export limit" in got.stderr and "Traceback" not in got.stderr
            ok = await run_cli(node, "docker", "run", IMAGE, "--", "echo", "alive")
            assert ok.returncode == 0 and ok.stdout == "alive\n", ok.stderr
            nursery.cancel_scope.cancel()
