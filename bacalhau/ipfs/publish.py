"""Publishing an execution's result into the node's blockstore as one UnixFS directory:
stdout, stderr, exitCode and outputs/ (the same tree `bacalhau get` downloads), pinned."""

from __future__ import annotations

from pathlib import Path

from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import Importer, cid_str

RESULT_ENTRIES = ("exitCode", "outputs", "stderr", "stdout")


def publish_result(root: Path, store: Blockstore) -> str:
    importer = Importer(store.put)

    def node_of(path: Path):  # type: ignore[no-untyped-def]
        if path.is_symlink():
            return importer.add_symlink(path)
        if path.is_dir():
            return importer.add_dir([(child.name, node_of(child)) for child in sorted(path.iterdir())])
        return importer.add_file(path)

    entries = [(name, node_of(root / name)) for name in RESULT_ENTRIES if (root / name).exists()]
    directory = importer.add_dir(entries)
    store.pin(directory.cid)
    return cid_str(directory.cid)
