"""Interop with real Kubo 0.22 (the kubo-python wheel's shared library, run in a child process), both ways:
our node fetches what Kubo added, Kubo fetches what our node added and what a job published."""

from __future__ import annotations

import filecmp
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bacalhau.ipfs.unixfs import cid_to_bytes
from bacalhau.node import Node
from bacalhau.testing.kubo import Kubo
from tests.conftest import node_config, run_cli


@pytest.fixture
def kubo(tmp_path: Path) -> Iterator[Kubo]:
    with Kubo.start(tmp_path / "kubo") as k:
        yield k


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))   # 13 chunks: a two-level DAG
    (root / "sub" / "hello.txt").write_text("hello from the tree\n")
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / ".hidden").write_text("hidden files are part of it\n")
    return root


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


async def wait_connected(kubo: Kubo, peer_id: str) -> None:
    with trio.fail_after(15):
        while peer_id not in await trio.to_thread.run_sync(kubo.peers):
            await trio.sleep(0.1)


async def test_our_node_fetches_a_file_and_a_directory_that_kubo_added(tmp_path: Path, kubo: Kubo) -> None:
    tree = make_tree(tmp_path / "tree")
    file_cid = await trio.to_thread.run_sync(kubo.add, tree / "big.bin")
    dir_cid = await trio.to_thread.run_sync(kubo.add, tree)
    async with trio.open_nursery() as nursery:
        # --ipfs-swarm-addrs: the node dials Kubo itself and stays connected
        node: Node = await nursery.start(Node(node_config(tmp_path / "node", ipfs_swarm_addrs=(kubo.addrs[0],))).run)
        await wait_connected(kubo, node.ipfs_host.peer_id)
        # the same bytes give the same CIDs here as in Kubo
        ours = await run_cli(node, "ipfs", "add", "-r", "--only-hash", str(tree))
        assert ours.returncode == 0, ours.stderr
        lines = {path: cid for _, cid, path in (line.split(None, 2) for line in ours.stdout.splitlines())}
        assert lines["tree"] == dir_cid and lines["tree/big.bin"] == file_cid
        assert not node.blockstore.has(cid_to_bytes(dir_cid))

        got = await run_cli(node, "ipfs", "get", dir_cid, "-o", str(tmp_path / "dir-back"))
        assert got.returncode == 0, got.stderr
        assert same_tree(tree, tmp_path / "dir-back")
        cat = await run_cli(node, "ipfs", "cat", file_cid)
        assert cat.stdout_bytes == (tree / "big.bin").read_bytes()
        nursery.cancel_scope.cancel()


@pytest.mark.docker
async def test_kubo_fetches_what_our_node_added_and_a_jobs_published_result(tmp_path: Path, kubo: Kubo) -> None:
    tree = make_tree(tmp_path / "tree")
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node")).run)
        ident = json.loads((await run_cli(node, "ipfs", "id")).stdout)
        await trio.to_thread.run_sync(kubo.connect, ident["Addresses"][0])   # `ipfs swarm connect` on Kubo's side

        added = await run_cli(node, "ipfs", "add", "-r", str(tree))
        assert added.returncode == 0, added.stderr
        dir_cid = added.stdout.splitlines()[-1].split()[1]
        await trio.to_thread.run_sync(kubo.download, dir_cid, tmp_path / "kubo-dir")
        assert same_tree(tree, tmp_path / "kubo-dir")

        job = await run_cli(node, "docker", "run", "--id-only", "bacalhau/busybox:latest", "--", "sh", "-c",
                            "echo out-line; head -c 1000000 /dev/zero > /outputs/zeros; echo made >&2")
        assert job.returncode == 0, job.stderr
        with trio.fail_after(60):
            while True:
                described = json.loads((await run_cli(node, "describe", job.stdout.strip(), "-o", "json")).stdout)
                if described["state"] not in ("pending", "in_progress"):
                    break
                await trio.sleep(0.2)
        assert described["state"] == "completed", described["reason"]
        refs = [e["result_ref"] for e in described["executions"] if e["result_ref"].startswith("ipfs://")]
        cid = refs[0].removeprefix("ipfs://")
        await trio.to_thread.run_sync(kubo.download, cid, tmp_path / "kubo-result")
        out = tmp_path / "kubo-result"
        assert (out / "stdout").read_text() == "out-line\n" and (out / "stderr").read_text() == "made\n"
        assert (out / "exitCode").read_text().strip() == "0"
        assert (out / "outputs" / "zeros").read_bytes() == bytes(1000000)
        nursery.cancel_scope.cancel()


async def test_after_a_restart_the_ipfs_peer_id_is_the_same_and_kubo_still_gets_every_cid(
        tmp_path: Path, kubo: Kubo) -> None:
    tree = make_tree(tmp_path / "tree")
    config = node_config(tmp_path / "node")
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        before = (await node.content.ipfs_identity())["ID"]
        added = await run_cli(node, "ipfs", "add", "-r", str(tree))
        dir_cid = added.stdout.splitlines()[-1].split()[1]
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(config).run)
        assert (await node.content.ipfs_identity())["ID"] == before
        await trio.to_thread.run_sync(kubo.connect, (await node.content.ipfs_identity())["Addresses"][0])
        await trio.to_thread.run_sync(kubo.download, dir_cid, tmp_path / "kubo-dir")
        assert same_tree(tree, tmp_path / "kubo-dir")
        nursery.cancel_scope.cancel()


async def test_the_ipfs_side_can_be_kept_to_this_machine_while_the_cluster_listens_on_all(tmp_path: Path) -> None:
    config = node_config(tmp_path / "node", swarm_host="0.0.0.0", ipfs_swarm_host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        assert any("/ip4/0.0.0.0/" in a for a in node.addrs())
        addrs = (await node.content.ipfs_identity())["Addresses"]
        assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
        nursery.cancel_scope.cancel()
