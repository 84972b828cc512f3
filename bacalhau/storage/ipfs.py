"""ipfs:// inputs: fetched (from the cluster's nodes, or the external IPFS node) when this node does not hold them
(results of earlier jobs live in the blockstores, so one job's output CID can feed the next), then exported
into the job's input directory. A node that holds the CID bids first (see compute/node.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bacalhau.errors import BacalhauError, ExecutorError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import valid_cid
from bacalhau.ipfs.exporter import export_into
from bacalhau.ipfs.unixfs import cid_to_bytes
from bacalhau.models import StorageSpec


def parse_ipfs_source(source: str) -> bytes:
    text = source.removeprefix("ipfs://").strip("/")
    try:
        cid = cid_to_bytes(text)
    except ValueError as exc:
        raise ExecutorError(f"input {source!r}: {exc}") from None
    if not valid_cid(cid):
        raise ExecutorError(f"input {source!r}: not a sha2-256 CID")
    return cid


def holds(store: Blockstore, source: str) -> bool:
    try:
        return store.has(parse_ipfs_source(source))
    except ExecutorError:
        return False


class IpfsStorage:
    schemes = ("ipfs",)

    def __init__(self, store: Blockstore, fetch: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._fetch = fetch           # NodeContent.fetch_cid (content.py), or None where a test gives no node

    async def prepare(self, spec: StorageSpec, dest: Path) -> None:
        """A directory's entries land right at the mount path; a single file lands as PATH/<CID>."""
        cid = parse_ipfs_source(spec.source)
        name = spec.source.removeprefix("ipfs://").strip("/")
        try:
            if self._fetch is not None:
                await self._fetch(cid)
            await trio.to_thread.run_sync(export_into, cid, self._store, dest, name)
        except BacalhauError as exc:
            raise ExecutorError(f"input {spec.source}: {exc}") from None
