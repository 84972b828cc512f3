"""A hostile IPFS peer: anyone who reaches the embedded IPFS node's keyless libp2p host. It must not get the
node's unpinned blocks, hold its answer slots by never reading, keep streams open forever, or crash bitswap
with a malformed want. The serving side is a bare P2PHost + Bitswap, as the node assembles them (short
timeouts, so the test is quick); the attacker is a bare P2PHost speaking bitswap by hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.cli.serve import join_instructions
from bacalhau.errors import NotFoundError, TransportError
from bacalhau.ipfs import bitswap as bs
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import decode_links
from bacalhau.ipfs.unixfs import _varint, add_path, cid_to_bytes, make_cid
from bacalhau.node import Node
from bacalhau.p2p.host import P2PHost
from tests.conftest import node_config


async def start_host(nursery: trio.Nursery, key: Path, peers: tuple[str, ...] = ()) -> P2PHost:
    host: P2PHost = await nursery.start(P2PHost(key_path=key, listen_host="127.0.0.1", listen_port=0,
                                                peers=peers, pubsub=False).run)
    return host


async def connected(a: P2PHost, b: P2PHost) -> None:
    with trio.fail_after(10):
        while a.peer_id not in b.connected_peers():
            await trio.sleep(0.05)


def big_file(tmp_path: Path, store: Blockstore, name: str, size: int) -> bytes:
    (tmp_path / name).write_bytes(os.urandom(size))
    root = cid_to_bytes(add_path(tmp_path / name, put=store.put)[-1][0])
    store.pin(root)
    return root


def frame(message: bytes) -> bytes:
    return bytes(_varint(len(message))) + message


async def test_the_keyless_ipfs_host_listens_on_loopback_unless_opened(tmp_path: Path) -> None:
    # the cluster on all interfaces, as `serve` has it by default
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", swarm_host="0.0.0.0",
                                                    serve_api=False)).run)
        addrs = node.ipfs_host.listen_addrs
        assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in addrs)
        ipfs = await node.content.ipfs_identity()
        banner = join_instructions(node.node_id, node.addrs(), "0.0.0.0", "127.0.0.1", None, node.swarm_key,
                                   None, ipfs)
        assert "--ipfs-swarm-host 0.0.0.0" in banner
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node2", swarm_host="127.0.0.1",
                                                    ipfs_swarm_host="0.0.0.0", serve_api=False)).run)
        assert any("/ip4/0.0.0.0/" in a for a in node.ipfs_host.listen_addrs)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_peer_that_asks_for_blocks_and_never_reads_holds_up_no_other_fetch(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "server")
    big = big_file(tmp_path, store, "big.bin", 8 * 1024 * 1024)          # 32 blocks of 256 KiB
    wanted = [link.cid for link in decode_links(store.get(big))]
    other = big_file(tmp_path, store, "other.bin", 3 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        server_host = await start_host(nursery, tmp_path / "server.key")
        server = await nursery.start(bs.Bitswap([server_host], store, public=[server_host], write_timeout=5.0).run)
        slow = await start_host(nursery, tmp_path / "slow.key", (server_host.listen_addrs[0],))
        held: list[Any] = []

        async def never_read(peer: str, stream: Any) -> None:
            held.append(stream)          # the server's replies come on a stream this peer never reads
            await trio.sleep_forever()

        slow.set_stream_handler(bs.PROTOCOL, never_read)
        await connected(server_host, slow)
        stream = await slow.open_stream(server_host.peer_id, bs.PROTOCOL)
        # far more want messages than the per-peer queue, each for blocks of 256 KiB
        for _ in range(3 * bs.PEER_QUEUE):
            await stream.write(frame(bs.encode_message(wants=wanted[:8])))
        with trio.fail_after(10):
            while not held:
                await trio.sleep(0.02)
        most, fewest_free = 0, bs.ANSWERS
        with trio.move_on_after(0.5):
            while True:
                most = max(most, server.answering(slow.peer_id))
                fewest_free = min(fewest_free, server.free_answer_slots())
                await trio.sleep(0.01)
        assert 0 < most <= bs.PEER_QUEUE                          # the rest of its wants were dropped
        assert fewest_free == bs.ANSWERS - bs.PEER_ANSWERS        # it holds its share of the slots, no more

        # another peer fetches meanwhile, in its normal time (well under a second here; bound generously)
        good_store = Blockstore(tmp_path / "good")
        good_host = await start_host(nursery, tmp_path / "good.key", (server_host.listen_addrs[0],))
        await connected(server_host, good_host)
        good = await nursery.start(bs.Bitswap([good_host], good_store).run)
        with trio.fail_after(20):
            await good.fetch(other, timeout=20)
        assert good_store.has(other)

        # the peer that never reads loses its replies after the write timeout: nothing of it is left queued
        with trio.fail_after(20):
            while server.answering(slow.peer_id):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_the_keyless_side_serves_pinned_content_only(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "server")
    pinned = big_file(tmp_path, store, "pinned.bin", 600 * 1024)
    (tmp_path / "cached.bin").write_bytes(os.urandom(1000))        # held (say, fetched as an input), not pinned
    cached = cid_to_bytes(add_path(tmp_path / "cached.bin", put=store.put)[-1][0])
    assert store.has(cached)
    async with trio.open_nursery() as nursery:
        public_host = await start_host(nursery, tmp_path / "public.key")
        cluster_host = await start_host(nursery, tmp_path / "cluster.key")
        await nursery.start(bs.Bitswap([cluster_host, public_host], store, public=[public_host]).run)
        stranger_host = await start_host(nursery, tmp_path / "stranger.key", (public_host.listen_addrs[0],))
        await connected(public_host, stranger_host)
        stranger = await nursery.start(bs.Bitswap([stranger_host], Blockstore(tmp_path / "stranger")).run)
        assert await stranger.fetch(pinned, timeout=20) == 4           # the root and its three leaves
        with pytest.raises(NotFoundError):
            await stranger.fetch(cached, timeout=10)
        # a pin added later is served at once
        store.pin(cached)
        assert await stranger.fetch(cached, timeout=10) == 1
        # the cluster's side serves every block held
        store.unpin(cached)
        (tmp_path / "cached2.bin").write_bytes(os.urandom(1000))
        cached2 = cid_to_bytes(add_path(tmp_path / "cached2.bin", put=store.put)[-1][0])
        member_host = await start_host(nursery, tmp_path / "member.key", (cluster_host.listen_addrs[0],))
        await connected(cluster_host, member_host)
        member = await nursery.start(bs.Bitswap([member_host], Blockstore(tmp_path / "member")).run)
        assert await member.fetch(cached2, timeout=10) == 1
        nursery.cancel_scope.cancel()


async def test_streams_over_the_cap_idle_streams_and_malformed_wants_are_dropped_and_serving_goes_on(
        tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "server")
    pinned = big_file(tmp_path, store, "pinned.bin", 1000)
    async with trio.open_nursery() as nursery:
        capped_host = await start_host(nursery, tmp_path / "capped.key")
        capped = await nursery.start(bs.Bitswap([capped_host], store, public=[capped_host]).run)
        peer = await start_host(nursery, tmp_path / "peer.key", (capped_host.listen_addrs[0],))
        await connected(capped_host, peer)
        for n in range(1, bs.PEER_STREAMS + 1):
            s = await peer.open_stream(capped_host.peer_id, bs.PROTOCOL)
            await s.write(frame(bs.encode_message()))      # an empty message: the stream is open and read
            with trio.fail_after(5):
                while capped.streams(peer.peer_id) < n:
                    await trio.sleep(0.02)
        try:
            extra = await peer.open_stream(capped_host.peer_id, bs.PROTOCOL)
            await extra.write(frame(bs.encode_message()))
            with trio.fail_after(5):
                assert await extra.read() == b""            # reset at once
        except TransportError:
            pass                                            # reset while the protocol was being agreed
        assert capped.streams(peer.peer_id) == bs.PEER_STREAMS

        idle_host = await start_host(nursery, tmp_path / "idle.key")
        idle = await nursery.start(bs.Bitswap([idle_host], store, public=[idle_host], idle_timeout=1.0).run)
        await peer.connect(idle_host.listen_addrs[0])
        stream = await peer.open_stream(idle_host.peer_id, bs.PROTOCOL)
        # wants of CIDs that are not CIDs (empty, a lone version byte): dropped, the stream goes on
        for junk in (b"", b"\x01", b"\x01\x80", b"\x12"):
            await stream.write(frame(bs.encode_message(wants=[junk])))
        with trio.fail_after(5):
            while not idle.streams(peer.peer_id):
                await trio.sleep(0.02)
        # an idle stream is reset after the idle timeout
        with trio.fail_after(10):
            assert await stream.read() == b""
            while idle.streams(peer.peer_id):
                await trio.sleep(0.02)
        # and blocks are still served
        fetcher = await nursery.start(bs.Bitswap([peer], Blockstore(tmp_path / "peer")).run)
        assert await fetcher.fetch(pinned, timeout=10) == 1
        nursery.cancel_scope.cancel()


async def test_a_peer_that_connects_many_times_keeps_two_connections(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, tmp_path / "server.key")
        # one identity, many hosts: each dials the server on its own connection
        clones = [await start_host(nursery, tmp_path / "same.key") for _ in range(5)]
        peer = clones[0].peer_id
        assert all(c.peer_id == peer for c in clones)
        for clone in clones:
            await clone.connect(server.listen_addrs[0])
        with trio.fail_after(10):
            while server.connection_count(peer) > 2:
                await trio.sleep(0.05)
        assert server.connection_count(peer) >= 1      # capped, not cut off
        nursery.cancel_scope.cancel()


def test_a_well_formed_cid_check_takes_every_cid_this_store_holds() -> None:
    for codec, version in ((0x70, 0), (0x55, 1), (0x70, 1)):
        assert bs._well_formed(make_cid(b"x", codec, version))
    assert not any(bs._well_formed(c) for c in (b"", b"\x01", b"\x01\x80", b"\x12\x20", b"\x01" + b"\x80" * 40))
