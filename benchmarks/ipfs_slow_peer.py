"""A bitswap fetch from a node while another peer floods it with wants for big blocks and never reads the
replies, against the same fetch with no such peer, in one process on loopback. Before per-peer caps and write
timeouts the flooding peer held all the node's answer slots and the fetch did not complete within --timeout.

    .venv/bin/python benchmarks/ipfs_slow_peer.py [--mb 3] [--wants 192] [--timeout 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bacalhau.ipfs import bitswap as bs
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import decode_links
from bacalhau.ipfs.unixfs import _varint, add_path, cid_to_bytes
from bacalhau.p2p.host import P2PHost


def add_file(tmp: Path, store: Blockstore, name: str, size: int) -> bytes:
    (tmp / name).write_bytes(os.urandom(size))
    root = cid_to_bytes(add_path(tmp / name, put=store.put)[-1][0])
    store.pin(root)
    return root


async def host(nursery: trio.Nursery, key: Path, peers: tuple[str, ...] = ()) -> P2PHost:
    h: P2PHost = await nursery.start(P2PHost(key_path=key, listen_host="127.0.0.1", listen_port=0, peers=peers,
                                             pubsub=False).run)
    return h


async def connected(a: P2PHost, b: P2PHost) -> None:
    while a.peer_id not in b.connected_peers():  # noqa: ASYNC110  (py-libp2p has no event for it)
        await trio.sleep(0.05)


async def timed_fetch(tmp: Path, nursery: trio.Nursery, server: P2PHost, root: bytes, name: str,
                      timeout: float) -> str:
    fetcher = await host(nursery, tmp / f"{name}.key", (server.listen_addrs[0],))
    await connected(server, fetcher)
    swap = await nursery.start(bs.Bitswap([fetcher], Blockstore(tmp / name)).run)
    start = time.monotonic()
    try:
        await swap.fetch(root, timeout=timeout)
    except (trio.TooSlowError, Exception) as exc:  # report any failure as a figure
        return f"failed after {time.monotonic() - start:.1f} s ({type(exc).__name__})"
    return f"{time.monotonic() - start:.2f} s"


async def main(mb: int, wants: int, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = Blockstore(tmp / "server")
        big = add_file(tmp, store, "big.bin", 8 * 1024 * 1024)
        wanted = [link.cid for link in decode_links(store.get(big))][:8]
        files = [add_file(tmp, store, f"f{i}.bin", mb * 1000 * 1000) for i in range(2)]
        async with trio.open_nursery() as nursery:
            server = await host(nursery, tmp / "server.key")
            await nursery.start(bs.Bitswap([server], store).run)
            print(f"fetch of {mb} MB, no other peer: {await timed_fetch(tmp, nursery, server, files[0], 'a', timeout)}")

            slow = await host(nursery, tmp / "slow.key", (server.listen_addrs[0],))

            async def never_read(peer: str, stream: Any) -> None:
                await trio.sleep_forever()

            slow.set_stream_handler(bs.PROTOCOL, never_read)
            await connected(server, slow)
            stream = await slow.open_stream(server.peer_id, bs.PROTOCOL)
            message = bs.encode_message(wants=wanted)
            for _ in range(wants):
                await stream.write(bytes(_varint(len(message))) + message)
            await trio.sleep(1)     # its replies are under way and stuck
            print(f"fetch of {mb} MB, a peer flooding {wants} want messages and never reading: "
                  f"{await timed_fetch(tmp, nursery, server, files[1], 'b', timeout)}")
            nursery.cancel_scope.cancel()
        store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=3)
    parser.add_argument("--wants", type=int, default=192)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    trio.run(main, args.mb, args.wants, args.timeout)
