"""The UnixFS importer against the CIDs real Kubo gives for a generated corpus (tests/data/ipfs-vectors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bacalhau.ipfs.unixfs import add_path, cid_str, dag_pb, make_cid, unixfs_data

VECTORS = Path(__file__).resolve().parents[1] / "data" / "ipfs-vectors"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(VECTORS / "make_corpus.py"), str(out)], check=True, capture_output=True)
    return out


def expected(version: int) -> list[tuple[str, str]]:
    lines = (VECTORS / f"cids-v{version}.txt").read_text().splitlines()
    return [(line.split()[0], line.split(None, 1)[1]) for line in lines if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("version", [0, 1])
def test_every_vector_line_is_reproduced(corpus: Path, version: int) -> None:
    want = expected(version)
    assert len(want) == 15
    got = [(add_path(corpus / name, cid_version=version)[-1][0], name) for _, name in want]
    assert got == want


def test_add_lists_every_entry_root_last_like_ipfs_add(corpus: Path) -> None:
    lines = add_path(corpus / "tree")
    assert lines[-1][1] == "tree"
    assert {rel for _, rel in lines} == {"tree", "tree/readme.md", "tree/.config", "tree/empty", "tree/src",
                                         "tree/src/main.py", "tree/src/data", "tree/src/data/blob.bin"}


def test_blocks_handed_to_put_match_their_cids(corpus: Path) -> None:
    import hashlib

    blocks: dict[bytes, bytes] = {}
    add_path(corpus / "three_chunks.bin", put=blocks.__setitem__)
    assert len(blocks) == 4  # three leaves and their parent
    for cid, block in blocks.items():
        assert cid[2:] == hashlib.sha256(block).digest()


def test_known_small_blocks() -> None:
    empty_dir = dag_pb(unixfs_data(1), [])
    assert cid_str(make_cid(empty_dir, 0x70, 0)) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    assert cid_str(make_cid(b"", 0x55, 1)) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_symlinks_become_unixfs_symlinks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "target.txt").write_text("x")
    (tmp_path / "d" / "link").symlink_to("target.txt")
    lines = dict((rel, cid) for cid, rel in add_path(tmp_path / "d"))
    blocks: dict[bytes, bytes] = {}
    add_path(tmp_path / "d" / "link", put=blocks.__setitem__)
    (block,) = blocks.values()
    assert b"target.txt" in block and b"\x08\x04" in block   # UnixFS Type=Symlink, the target as data
    assert lines["d/link"] != lines["d/target.txt"]


async def test_the_cli_prints_ipfs_add_lines(corpus: Path) -> None:
    from tests.conftest import run_cli

    res = await run_cli(None, "ipfs", "add", "-n", str(corpus / "hello.txt"))
    assert res.returncode == 0 and res.stdout == f"added {expected(0)[3][0]} hello.txt\n"
    assert expected(0)[3][1] == "hello.txt"
    res = await run_cli(None, "ipfs", "add", "-n", "-r", "-q", "--cid-version", "1", str(corpus / "names"))
    assert res.stdout.strip() == dict((n, c) for c, n in expected(1))["names"]
    res = await run_cli(None, "ipfs", "add", "-n", str(corpus / "names"))
    assert res.returncode == 1 and "use -r" in res.stderr


@pytest.mark.docker
async def test_add_get_and_cat_through_a_node(corpus: Path, single_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import filecmp
    import json

    from tests.conftest import run_cli

    res = await run_cli(single_node, "ipfs", "add", "-r", str(corpus / "tree"))
    assert res.returncode == 0, res.stderr
    root = res.stdout.splitlines()[-1].split()[1]
    assert root == dict((n, c) for c, n in expected(0))["tree"]
    got = await run_cli(single_node, "ipfs", "get", root, "-o", str(tmp_path / "back"))
    assert got.returncode == 0, got.stderr
    cmp = filecmp.dircmp(corpus / "tree", tmp_path / "back")
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files)
    hello = (await run_cli(single_node, "ipfs", "add", "-q", str(corpus / "hello.txt"))).stdout.strip()
    assert (await run_cli(single_node, "ipfs", "cat", hello)).stdout == "hello world\n"
    missing = await run_cli(single_node, "ipfs", "cat", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    assert missing.returncode == 1 and "held by no node of this cluster" in missing.stderr
    in_path = await run_cli(single_node, "ipfs", "cat", f"{root}/src/main.py")
    assert in_path.returncode == 1 and "paths inside a CID are not supported" in in_path.stderr \
        and f"({root})" in in_path.stderr and "Traceback" not in in_path.stderr
    ident = json.loads((await run_cli(single_node, "ipfs", "id")).stdout)
    # the embedded IPFS node is a peer of its own (no swarm key, so Kubo can connect), kept across restarts
    assert ident["ID"] == single_node.ipfs_host.peer_id != single_node.node_id
    assert ident["Addresses"] and all(a.endswith(f"/p2p/{ident['ID']}") for a in ident["Addresses"])
    # what was added can feed a job
    job = await run_cli(single_node, "docker", "run", "-i", f"ipfs://{root}:/tree", "bacalhau/busybox:latest", "--",
                        "cat", "/tree/src/main.py")
    assert job.returncode == 0 and job.stdout == "print('hi')\n", job.stderr


@pytest.mark.slow
def test_import_then_export_round_trips_the_corpus_with_verified_blocks(corpus: Path, tmp_path: Path) -> None:
    import filecmp

    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.ipfs.exporter import export
    from bacalhau.ipfs.unixfs import cid_to_bytes

    store = Blockstore(tmp_path / "store")
    for version in (0, 1):
        for name in ("tree", "shard5000", "level2.bin", "names", "empty.bin", "empty_dir"):
            root = add_path(corpus / name, put=store.put, cid_version=version)[-1][0]
            out = tmp_path / f"out-{version}-{name}"
            export(cid_to_bytes(root), store, out)
            if (corpus / name).is_dir():
                cmp = filecmp.dircmp(corpus / name, out)
                assert not (cmp.left_only or cmp.right_only or cmp.diff_files), name
                assert sorted(p.relative_to(out) for p in out.rglob("*")) == \
                    sorted(p.relative_to(corpus / name) for p in (corpus / name).rglob("*"))
            else:
                assert filecmp.cmp(corpus / name, out, shallow=False)


def test_pins_survive_gc_and_corruption_is_caught(corpus: Path, tmp_path: Path) -> None:
    from bacalhau.errors import StateError
    from bacalhau.ipfs.blockstore import Blockstore, CorruptBlockError
    from bacalhau.ipfs.exporter import cat
    from bacalhau.ipfs.unixfs import cid_to_bytes

    store = Blockstore(tmp_path / "store")
    kept = cid_to_bytes(add_path(corpus / "three_chunks.bin", put=store.put)[-1][0])
    gone = cid_to_bytes(add_path(corpus / "hello.txt", put=store.put)[-1][0])
    store.pin(kept)
    assert store.gc() == 1
    assert store.has(kept) and not store.has(gone)
    assert store.gc() == 0
    assert b"".join(cat(kept, store)) == (corpus / "three_chunks.bin").read_bytes()
    assert len(list((tmp_path / "store" / "packs").glob("*.pack"))) == 1   # the rewritten pack is gone
    pack, offset, _ = store.locate(kept)
    with open(pack, "r+b") as f:      # bit rot
        f.seek(offset)
        f.write(b"X")
    try:
        b"".join(cat(kept, store))
    except CorruptBlockError:
        pass
    else:
        raise AssertionError("a corrupt block was served")
    # a persistent store: a new instance over the same dir sees the same pins, once this one is closed
    with pytest.raises(StateError, match="in use by another node"):
        Blockstore(tmp_path / "store")
    store.close()
    assert Blockstore(tmp_path / "store").pins() == [kept]


def test_a_crash_mid_write_never_leaves_a_block_that_misses_its_cid(tmp_path: Path) -> None:
    import os

    from bacalhau.ipfs.blockstore import RECORD, Blockstore, multihash_of

    store = Blockstore(tmp_path / "store")
    blocks = [(make_cid(data, 0x55, 1), data) for data in (os.urandom(1000) for _ in range(3))]
    store.put_many(blocks[:2])
    pack, _, _ = store.locate(blocks[0][0])
    good_size = pack.stat().st_size
    store.close()
    mh = multihash_of(blocks[2][0])        # what a crash leaves: a record written in part...
    with open(pack, "ab") as f:
        f.write(RECORD.pack(1000, len(mh)) + mh + blocks[2][1][:400])
    store = Blockstore(tmp_path / "store")
    assert pack.stat().st_size == good_size and not store.has(blocks[2][0])
    assert [store.get(cid) for cid, _ in blocks[:2]] == [data for _, data in blocks[:2]]
    store.close()
    with open(pack, "ab") as f:            # ...or in full, but with bytes the disk never got
        f.write(RECORD.pack(1000, len(mh)) + mh + bytes(1000))
    store = Blockstore(tmp_path / "store")
    assert pack.stat().st_size == good_size and not store.has(blocks[2][0])
    store.close()
    with open(pack, "ab") as f:            # the same record, whole: kept
        f.write(RECORD.pack(1000, len(mh)) + mh + blocks[2][1])
    store = Blockstore(tmp_path / "store")
    assert store.get(blocks[2][0]) == blocks[2][1]
    store.put(make_cid(b"next", 0x55, 1), b"next")       # and the store goes on from there
    store.close()
    assert Blockstore(tmp_path / "store").get(make_cid(b"next", 0x55, 1)) == b"next"


def test_a_repo_with_a_file_per_block_is_moved_into_packs(corpus: Path, tmp_path: Path) -> None:
    import base64

    from bacalhau.ipfs.blockstore import Blockstore, multihash_of
    from bacalhau.ipfs.exporter import cat
    from bacalhau.ipfs.unixfs import cid_to_bytes

    blocks: dict[bytes, bytes] = {}
    root = cid_to_bytes(add_path(corpus / "three_chunks.bin", put=blocks.__setitem__)[-1][0])
    for cid, data in blocks.items():        # the layout before packs
        name = base64.b32encode(multihash_of(cid)).decode().rstrip("=")
        (tmp_path / "store" / "blocks" / name[-2:]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "store" / "blocks" / name[-2:] / name).write_bytes(data)
        (tmp_path / "store" / "blocks" / name[-2:] / ".tmp-1-1").write_bytes(b"what a crash left")
    store = Blockstore(tmp_path / "store")
    assert not (tmp_path / "store" / "blocks").exists()
    assert b"".join(cat(root, store)) == (corpus / "three_chunks.bin").read_bytes()


def test_concurrent_pins_from_worker_threads_are_all_kept(tmp_path: Path) -> None:
    import threading

    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.ipfs.unixfs import make_cid

    store = Blockstore(tmp_path / "store")
    cids = [make_cid(b"%d" % i, 0x55, 1) for i in range(40)]
    threads = [threading.Thread(target=store.pin, args=(c,)) for c in cids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.pins()) == sorted(cids)
