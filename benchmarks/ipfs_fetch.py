"""Bitswap fetch of a 200 MB file between two of our nodes on loopback (two libp2p hosts in one process,
as in a devstack), against one py-libp2p stream carrying the same bytes in the same run. Median of runs.

    .venv/bin/python benchmarks/ipfs_fetch.py [--mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.ipfs.bitswap import Bitswap
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.p2p.host import P2PHost


def make_data(tmp: Path, mb: int) -> Path:
    src = tmp / "data.bin"
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1000 * 1000))
    return src


async def main(mb: int, runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    size = mb * 1000 * 1000
    src = make_data(tmp, mb)
    store_a = Blockstore(tmp / "a")
    root = cid_to_bytes(add_path(src, put=store_a.put)[-1][0])
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp / "a.key", listen_host="127.0.0.1", listen_port=0).run)
        b = await nursery.start(P2PHost(key_path=tmp / "b.key", listen_host="127.0.0.1", listen_port=0,
                                        peers=[a.listen_addrs[0]]).run)
        while a.peer_id not in b.connected_peers():  # noqa: ASYNC110  (py-libp2p offers no event for this)
            await trio.sleep(0.05)
        await nursery.start(Bitswap(a, store_a).run)

        async def blast(peer: str, stream: object) -> None:
            await stream.read_frame()  # type: ignore[attr-defined]
            block = os.urandom(256 * 1024)
            for _ in range(size // len(block)):
                await stream.write(block)  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]

        a.set_stream_handler("/bench/blast/1.0.0", blast)
        ours, raw = [], []
        for run in range(runs):
            store_b = Blockstore(tmp / f"b{run}")
            swap = await nursery.start(Bitswap(b, store_b).run)
            start = time.perf_counter()
            await swap.fetch(root, timeout=600)
            ours.append(size / (time.perf_counter() - start) / 1e6)
            stream = await b.open_stream(a.peer_id, "/bench/blast/1.0.0")
            start = time.perf_counter()
            await stream.write_frame(b"go")
            got = 0
            while chunk := await stream.read(1 << 20):
                got += len(chunk)
            raw.append(got / (time.perf_counter() - start) / 1e6)
            print(f"run {run + 1}: bitswap {ours[-1]:6.1f} MB/s, one raw libp2p stream {raw[-1]:6.1f} MB/s")
        print(f"median: bitswap {statistics.median(ours):.1f} MB/s (target >= 100), raw stream "
              f"{statistics.median(raw):.1f} MB/s, ratio {statistics.median(ours) / statistics.median(raw):.2f}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.mb, args.runs)
