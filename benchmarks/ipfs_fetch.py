"""Bitswap fetch of a 200 MB file between two of our nodes on loopback, each in its own process as two
daemons would be, against one py-libp2p stream carrying the same bytes between the same two processes in the
same run. Median of runs; target: bitswap >= 100 MB/s.

    .venv/bin/python benchmarks/ipfs_fetch.py [--mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.ipfs.bitswap import Bitswap
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.p2p.host import P2PHost

BLAST = "/bench/blast/1.0.0"


def prepare(tmp: Path, mb: int) -> tuple[Blockstore, str]:
    src = tmp / "data.bin"
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1000 * 1000))
    store = Blockstore(tmp / "a")
    return store, add_path(src, put=store.put)[-1][0]


async def serve(tmp: Path, mb: int, store: Blockstore, root: str) -> None:
    """The node that holds the file: prints its address and root CID, then serves until killed."""
    size = mb * 1000 * 1000
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp / "a.key", listen_host="127.0.0.1", listen_port=0,
                                        pubsub=False).run)
        await nursery.start(Bitswap(a, store).run)

        async def blast(peer: str, stream: object) -> None:
            await stream.read_frame()  # type: ignore[attr-defined]
            block = os.urandom(256 * 1024)
            for _ in range(size // len(block)):
                await stream.write(block)  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]

        a.set_stream_handler(BLAST, blast)
        print(a.listen_addrs[0], root, flush=True)


async def fetch(tmp: Path, mb: int, runs: int, addr: str, root: bytes) -> None:
    size = mb * 1000 * 1000
    peer = addr.rsplit("/p2p/", 1)[1]
    ours, raw = [], []
    for run in range(runs):
        async with trio.open_nursery() as nursery:   # a fresh node each run: empty store, new connection
            b = await nursery.start(P2PHost(key_path=tmp / f"b{run}.key", listen_host="127.0.0.1",
                                            listen_port=0, peers=[addr], pubsub=False).run)
            while peer not in b.connected_peers():  # noqa: ASYNC110  (py-libp2p has no event for it)
                await trio.sleep(0.05)
            swap = await nursery.start(Bitswap(b, Blockstore(tmp / f"b{run}")).run)
            start = time.perf_counter()
            await swap.fetch(root, timeout=600)
            ours.append(size / (time.perf_counter() - start) / 1e6)
            stream = await b.open_stream(peer, BLAST)
            start = time.perf_counter()
            await stream.write_frame(b"go")
            got = 0
            while chunk := await stream.read(1 << 20):
                got += len(chunk)
            raw.append(got / (time.perf_counter() - start) / 1e6)
            nursery.cancel_scope.cancel()
        print(f"run {run + 1}: bitswap {ours[-1]:6.1f} MB/s, one raw libp2p stream {raw[-1]:6.1f} MB/s")
    print(f"median: bitswap {statistics.median(ours):.1f} MB/s (target >= 100), raw stream "
          f"{statistics.median(raw):.1f} MB/s, ratio {statistics.median(ours) / statistics.median(raw):.2f}")


def main(mb: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        server = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--mb", str(mb)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            addr, root = server.stdout.readline().split()  # type: ignore[union-attr]
            trio.run(fetch, Path(tmp), mb, runs, addr, cid_to_bytes(root))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, Path(args.serve), args.mb, *prepare(Path(args.serve), args.mb))
    else:
        main(args.mb, args.runs)
