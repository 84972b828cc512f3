"""Hash-only add of 200 MB of random data: MB/s of our UnixFS importer (CIDv0, Kubo's defaults) against real
Kubo 0.22's `ipfs add --only-hash` (the kubo-python wheel's shared library, in a child process) on the same
file in the same run, and plain hashlib SHA-256 as the floor of what any importer costs. Median of runs;
target: ours >= 0.8x Kubo. Both must give the same CID.

    .venv/bin/python benchmarks/ipfs_add.py [--mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from bacalhau.ipfs.unixfs import add_path
from bacalhau.testing.kubo import Kubo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1000 * 1000
    with tempfile.TemporaryDirectory() as tmp, Kubo.start(Path(tmp) / "kubo") as kubo:
        path = Path(tmp) / "random.bin"
        with open(path, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(size % (1 << 20)))
        ours, theirs, sha = [], [], []
        for run in range(args.runs):
            start = time.perf_counter()
            cid = add_path(path)[-1][0]
            ours.append(size / (time.perf_counter() - start) / 1e6)
            start = time.perf_counter()
            kubo_cid = kubo.add(path, only_hash=True)
            theirs.append(size / (time.perf_counter() - start) / 1e6)
            if kubo_cid != cid:
                raise SystemExit(f"CIDs differ: ours {cid}, Kubo's {kubo_cid}")
            start = time.perf_counter()
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            sha.append(size / (time.perf_counter() - start) / 1e6)
            print(f"run {run + 1}: bacalhau ipfs add -n {ours[-1]:7.1f} MB/s, Kubo {theirs[-1]:7.1f} MB/s "
                  f"(both {cid}), sha256 alone {sha[-1]:7.1f} MB/s")
        print(f"median: ours {statistics.median(ours):.1f} MB/s, Kubo {statistics.median(theirs):.1f} MB/s, ratio "
              f"{statistics.median(ours) / statistics.median(theirs):.2f} (target >= 0.8); sha256 floor "
              f"{statistics.median(sha):.1f} MB/s")


if __name__ == "__main__":
    main()
