"""NodeContent: a node's content as the API and the compute side reach it (api/ports.py's ContentStore).

    blockstore        the blocks this node holds
    fetch_cid         the DAG under a CID into this node's store: the external IPFS node (--ipfs-connect) first,
                      then the cluster's nodes and this node's IPFS peers over bitswap
    ipfs_published    content added here or published by a job, pushed to the external IPFS node
    ipfs_identity     the IPFS node's peer id and addresses, as Kubo's `ipfs id` shows its own
    result_tar        a published result as a tar of its entries (its root checked first)
    result_file       one entry of a published result (stdout, stderr, exitCode) as a file
    open_result       a result item from the compute node that ran the execution

Which of these a job's result comes from is decided once, in api/results.py (fetch_result).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bacalhau.config import DEFAULT_FETCH_TIMEOUT
from bacalhau.errors import BacalhauError, NotFoundError, UserError
from bacalhau.ipfs.unixfs import cid_str

if TYPE_CHECKING:
    from bacalhau.bprotocol.transport import Transport
    from bacalhau.ipfs.bitswap import Bitswap
    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.ipfs.remote import RemoteIpfs

log = logging.getLogger(__name__)


def _result_entry(cid: bytes, item: str, blocks: Blockstore) -> bytes:
    """The CID of entry `item` of the result directory `cid` (its root held), once the root is checked."""
    from bacalhau.ipfs.dagpb import decode
    from bacalhau.ipfs.result_ref import check_result_root

    check_result_root(cid, blocks)
    _, links = decode(blocks.get(cid))
    entry = next((link.cid for link in links if link.name == item), None)
    if entry is None:
        raise NotFoundError(f"result {cid_str(cid)} has no {item}")
    return entry


def _held_entry_to_file(cid: bytes, item: str, blocks: Blockstore) -> Path:
    """Entry `item` of result `cid` as a file when every block of it is held; NotFoundError otherwise."""
    return _cat_to_file(_result_entry(cid, item, blocks), blocks)


def _cat_to_file(cid: bytes, blocks: Blockstore) -> Path:
    from bacalhau.ipfs.exporter import cat

    fd, name = tempfile.mkstemp(prefix="result-")
    try:
        with open(fd, "wb") as f:
            for chunk in cat(cid, blocks):
                f.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


class NodeContent:
    """The ContentStore of a running node. The IPFS parts (bitswap, the external node, the IPFS host) are set
    by Node._start as it brings them up; a node without them (in memory) serves only the blocks it holds."""

    def __init__(self, blockstore: Blockstore, *, node_id: str, transport: Transport,
                 call_timeout: float) -> None:
        self.blockstore = blockstore
        self.node_id = node_id
        self.transport = transport
        self.call_timeout = call_timeout
        self.bitswap: Bitswap | None = None
        self.remote_ipfs: RemoteIpfs | None = None     # with --ipfs-connect
        self.ipfs_host: Any = None                     # the embedded IPFS node's own libp2p host

    async def ipfs_identity(self) -> dict[str, Any]:
        """The IPFS node's peer ID and multiaddrs, as Kubo's `ipfs id` shows its own: the embedded node's,
        or the external one's with --ipfs-connect."""
        if self.remote_ipfs is not None:
            return await self.remote_ipfs.identity()
        if self.ipfs_host is None:
            return {"ID": self.node_id, "Addresses": []}
        from bacalhau.p2p.addrs import dialable

        return {"ID": self.ipfs_host.peer_id, "Addresses": dialable(list(self.ipfs_host.listen_addrs))}

    async def fetch_cid(self, cid: bytes, *, timeout: float = DEFAULT_FETCH_TIMEOUT,
                        max_blocks: int | None = None) -> None:
        """Make sure the DAG under `cid` is in this node's store: what is not here is fetched from the cluster
        and this node's IPFS peers. The whole DAG is walked, not only its root checked: a fetch cut short
        leaves the root held and blocks under it missing. Past `max_blocks` blocks it stops (UserError)."""

        def counted(blocks: int) -> None:
            if max_blocks is not None and blocks > max_blocks:
                raise UserError(f"{cid_str(cid)} is over {max_blocks} blocks")

        if self.remote_ipfs is not None:
            try:
                await self.remote_ipfs.fetch(cid, timeout=timeout, on_progress=counted)
                return
            except (BacalhauError, trio.TooSlowError) as exc:
                log.info("%s not from the IPFS node at %s (%s): asking the cluster", cid_str(cid),
                         self.remote_ipfs.maddr, exc)
        if self.bitswap is None:
            if await trio.to_thread.run_sync(self.blockstore.has, cid):
                return
            raise NotFoundError(f"{cid_str(cid)} is not held by this node")
        try:
            await self.bitswap.fetch(cid, timeout=timeout, on_progress=counted)
        except (NotFoundError, trio.TooSlowError):
            raise NotFoundError(f"{cid_str(cid)} is held by no node of this cluster") from None

    async def ipfs_published(self, cid: bytes) -> None:
        """Content this node added or a job published (pinned here): with --ipfs-connect it goes to the
        external node too, pinned there."""
        if self.remote_ipfs is not None:
            await self.remote_ipfs.push(cid)

    async def _fetch_root(self, cid: bytes) -> None:
        """The block `cid` alone into this node's store, where bitswap can get one block (the external IPFS
        node fetches whole DAGs)."""
        if await trio.to_thread.run_sync(self.blockstore.has, cid):
            return
        if self.bitswap is None or self.remote_ipfs is not None:
            await self.fetch_cid(cid)
            return
        try:
            await self.bitswap.fetch(cid, timeout=DEFAULT_FETCH_TIMEOUT, links=False)
        except (NotFoundError, trio.TooSlowError):
            raise NotFoundError(f"{cid_str(cid)} is held by no node of this cluster") from None

    async def result_tar(self, cid_text: str) -> Path:
        """A published result (a UnixFS directory of stdout, stderr, exitCode and outputs only) as a temporary
        tar of its entries. The reference came from a compute node: its root is checked before export."""
        from bacalhau.ipfs.exporter import export_tar
        from bacalhau.ipfs.result_ref import check_result_root, parse_result_ref

        cid = parse_result_ref(f"ipfs://{cid_text}")
        await self.fetch_cid(cid)
        await trio.to_thread.run_sync(check_result_root, cid, self.blockstore)
        return await trio.to_thread.run_sync(export_tar, cid, self.blockstore)

    async def result_file(self, cid_text: str, item: str) -> Path:
        """One entry of a published result as a temporary file; NotFoundError when the result has none. Only
        the root and that entry's blocks are fetched (stdout is not worth a job's whole outputs)."""
        from bacalhau.ipfs.result_ref import parse_result_ref

        cid = parse_result_ref(f"ipfs://{cid_text}")
        try:
            # all of it held here (the node that ran the job): one trip to a worker thread
            return await trio.to_thread.run_sync(_held_entry_to_file, cid, item, self.blockstore)
        except NotFoundError:
            pass
        await self._fetch_root(cid)
        entry = await trio.to_thread.run_sync(_result_entry, cid, item, self.blockstore)
        await self.fetch_cid(entry)
        return await trio.to_thread.run_sync(_cat_to_file, entry, self.blockstore)

    async def open_result(self, node_id: str, execution_id: str, item: str) -> AsyncIterator[bytes]:
        from bacalhau.bprotocol.proxies import ComputeProxy

        proxy = ComputeProxy(self.transport, self.call_timeout)
        async with proxy.get_result(node_id, execution_id, item) as chunks:
            async for chunk in chunks:
                yield chunk
