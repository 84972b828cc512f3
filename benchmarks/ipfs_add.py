"""Hash-only add of 200 MB of random data: MB/s of our UnixFS importer (CIDv0, Kubo's defaults), and of
plain hashlib SHA-256 over the same file as the floor of what any importer costs. Median of runs.

    .venv/bin/python benchmarks/ipfs_add.py [--mb 200] [--runs 3]

Kubo itself (the kubo-python wheel's shared library) is the baseline the issue names; it is not measured here
yet (see the closing note).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1000 * 1000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.bin"
        with open(path, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(size % (1 << 20)))
        ours, sha = [], []
        for run in range(args.runs):
            start = time.perf_counter()
            cid = add_path(path)[-1][0]
            ours.append(size / (time.perf_counter() - start) / 1e6)
            start = time.perf_counter()
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            sha.append(size / (time.perf_counter() - start) / 1e6)
            print(f"run {run + 1}: bacalhau ipfs add -n {ours[-1]:7.1f} MB/s ({cid}), sha256 alone {sha[-1]:7.1f} MB/s")
        print(f"median: ours {statistics.median(ours):.1f} MB/s, sha256 floor {statistics.median(sha):.1f} MB/s, "
              f"ratio {statistics.median(ours) / statistics.median(sha):.2f}")


if __name__ == "__main__":
    main()
