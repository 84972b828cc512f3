"""Bitswap between two of our nodes' libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest
import trio

from bacalhau.errors import NotFoundError
from bacalhau.ipfs.bitswap import Bitswap, decode_message, encode_message
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.exporter import export
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes, make_cid
from bacalhau.p2p.host import P2PHost


def test_messages_round_trip() -> None:
    a, b = make_cid(b"a", 0x55, 1), make_cid(b"b", 0x70, 0)
    msg = decode_message(encode_message(wants=[a, b], blocks=[(a, b"a"), (b, b"b")], haves=[a], dont_haves=[b]))
    assert [(w.cid, w.cancel, w.have_only, w.send_dont_have) for w in msg.wants] == [(a, False, False, True),
                                                                                  (b, False, False, True)]
    assert msg.blocks == [(a, b"a"), (b, b"b")] and msg.haves == [a] and msg.dont_haves == [b]


async def test_a_node_fetches_a_directory_and_a_big_file_from_another(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (src / "small.txt").write_text("small\n")
    store_a, store_b = Blockstore(tmp_path / "a"), Blockstore(tmp_path / "b")
    root = cid_to_bytes(add_path(src, put=store_a.put, cid_version=1)[-1][0])
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp_path / "a.key", listen_host="127.0.0.1", listen_port=0).run)
        b = await nursery.start(P2PHost(key_path=tmp_path / "b.key", listen_host="127.0.0.1", listen_port=0,
                                        peers=[a.listen_addrs[0]]).run)
        with trio.fail_after(10):
            while a.peer_id not in b.connected_peers():
                await trio.sleep(0.05)
        await nursery.start(Bitswap(a, store_a).run)
        swap_b = await nursery.start(Bitswap(b, store_b).run)
        assert not store_b.has(root)
        fetched = await swap_b.fetch(root, timeout=30)
        assert fetched >= 22   # 20 leaves of 256 KiB, the file node, dirs
        export(root, store_b, tmp_path / "out")
        cmp = filecmp.dircmp(src, tmp_path / "out")
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files)
        assert filecmp.cmp(src / "sub" / "big.bin", tmp_path / "out" / "sub" / "big.bin", shallow=False)
        with pytest.raises(NotFoundError, match="no connected peer has block"):
            await swap_b.fetch(make_cid(b"nobody has this", 0x55, 1), timeout=10)
        nursery.cancel_scope.cancel()
