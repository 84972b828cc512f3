"""Publishing a job's result into a fresh blockstore: the guarded, iterative walk of ipfs/publish.py (lstat per
entry, O_NOFOLLOW|O_NONBLOCK opens, a size budget while hashing) against the plain recursive walk it replaced,
interleaved, on the same tree: one big file and many small ones. Both must give the same CID. Median of runs.

    .venv/bin/python benchmarks/publish_result.py [--mb 100] [--files 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.publish import RESULT_ENTRIES, publish_result
from bacalhau.ipfs.unixfs import Importer, cid_str


def recursive_publish(root: Path, store: Blockstore) -> str:
    """The walk before: is_symlink / is_dir / open by path, recursing into directories."""
    importer = Importer(store.put)

    def node_of(path: Path):  # type: ignore[no-untyped-def]
        if path.is_symlink():
            return importer.add_symlink(path)
        if path.is_dir():
            return importer.add_dir([(child.name, node_of(child)) for child in sorted(path.iterdir())])
        return importer.add_file(path)

    directory = importer.add_dir([(name, node_of(root / name)) for name in RESULT_ENTRIES if (root / name).exists()])
    store.pin(directory.cid)
    return cid_str(directory.cid)


def make_result(root: Path, mb: int, files: int) -> int:
    outputs = root / "outputs"
    outputs.mkdir(parents=True)
    (root / "stdout").write_bytes(b"out\n")
    (root / "stderr").write_bytes(b"")
    (root / "exitCode").write_text("0")
    with open(outputs / "big.bin", "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    for i in range(files):
        d = outputs / f"dir{i % 50:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(1000))
    os.symlink("big.bin", outputs / "link")
    return mb * (1 << 20) + files * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "result"
        size = make_result(root, args.mb, args.files)
        times: dict[str, list[float]] = {"guarded": [], "recursive": []}
        cids: dict[str, str] = {}
        for run in range(args.runs):
            for name, fn in (("guarded", publish_result), ("recursive", recursive_publish)):
                store = Blockstore(Path(tmp) / f"store-{name}-{run}")
                start = time.perf_counter()
                cids[name] = fn(root, store)
                times[name].append(time.perf_counter() - start)
                store.close()
            print(f"run {run + 1}: guarded {times['guarded'][-1]:.2f} s, recursive {times['recursive'][-1]:.2f} s")
        if cids["guarded"] != cids["recursive"]:
            raise SystemExit(f"CIDs differ: {cids}")
        g, r = statistics.median(times["guarded"]), statistics.median(times["recursive"])
        print(f"median of {args.runs}: guarded {g:.2f} s ({size / g / 1e6:.0f} MB/s), recursive {r:.2f} s "
              f"({size / r / 1e6:.0f} MB/s), ratio {g / r:.2f}; both {cids['guarded']}")


if __name__ == "__main__":
    main()
