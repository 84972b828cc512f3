"""Bitswap with real Kubo 0.22 (the kubo-python wheel's shared library, in a child process), 50 MB of random
data each way on loopback: our node fetching what Kubo added, and Kubo fetching what our node added. The
baseline, in the same run, is Kubo fetching the same file from another Kubo. Median of runs; target: at
least 40 MB/s each way.

    .venv/bin/python benchmarks/ipfs_kubo.py [--mb 50] [--runs 3]
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
from bacalhau.testing.kubo import Kubo


async def our_node(nursery: trio.Nursery, tmp: Path, name: str, store: Blockstore) -> tuple[P2PHost, Bitswap]:
    host = await nursery.start(P2PHost(key_path=tmp / f"{name}.key", listen_host="127.0.0.1", listen_port=0,
                                       pubsub=False).run)
    return host, await nursery.start(Bitswap(host, store).run)


async def bench(tmp: Path, mb: int, runs: int) -> None:
    size = mb * 1000 * 1000
    src = tmp / "data.bin"
    src.write_bytes(os.urandom(size))
    ours_store = Blockstore(tmp / "ours")
    cid = add_path(src, put=ours_store.put)[-1][0]
    to_thread = trio.to_thread.run_sync
    kubo_to_us, us_to_kubo, kubo_to_kubo = [], [], []
    with Kubo.start(tmp / "kubo-source") as source:
        assert await to_thread(source.add, src) == cid, "Kubo and we disagree on the CID"
        for run in range(runs):
            async with trio.open_nursery() as nursery:
                # Kubo -> us: a fresh node with an empty store dials Kubo and fetches the file
                host, swap = await our_node(nursery, tmp, f"fetcher{run}", Blockstore(tmp / f"fetched{run}"))
                await host.connect(source.addrs[0])
                start = time.perf_counter()
                await swap.fetch(cid_to_bytes(cid), timeout=300)
                kubo_to_us.append(size / (time.perf_counter() - start) / 1e6)
                # us -> Kubo: a fresh Kubo connects to our node (which holds the file) and downloads it
                server, _ = await our_node(nursery, tmp, "server", ours_store)
                with Kubo.start(tmp / f"kubo-fetcher{run}") as fetcher:
                    await to_thread(fetcher.connect, server.listen_addrs[0])
                    start = time.perf_counter()
                    await to_thread(fetcher.download, cid, tmp / f"from-us{run}")
                    us_to_kubo.append(size / (time.perf_counter() - start) / 1e6)
                assert (tmp / f"from-us{run}").stat().st_size == size
                # Kubo -> Kubo, the baseline
                with Kubo.start(tmp / f"kubo-baseline{run}") as fetcher:
                    await to_thread(fetcher.connect, source.addrs[0])
                    start = time.perf_counter()
                    await to_thread(fetcher.download, cid, tmp / f"from-kubo{run}")
                    kubo_to_kubo.append(size / (time.perf_counter() - start) / 1e6)
                nursery.cancel_scope.cancel()
            print(f"run {run + 1}: Kubo -> us {kubo_to_us[-1]:6.1f} MB/s, us -> Kubo {us_to_kubo[-1]:6.1f} MB/s, "
                  f"Kubo -> Kubo {kubo_to_kubo[-1]:6.1f} MB/s")
    med = statistics.median
    print(f"median: Kubo -> us {med(kubo_to_us):.1f} MB/s, us -> Kubo {med(us_to_kubo):.1f} MB/s (target >= 40 "
          f"each), Kubo -> Kubo {med(kubo_to_kubo):.1f} MB/s; ratios to Kubo -> Kubo "
          f"{med(kubo_to_us) / med(kubo_to_kubo):.2f} and {med(us_to_kubo) / med(kubo_to_kubo):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kubo-") as tmp:
        trio.run(bench, Path(tmp), args.mb, args.runs)
