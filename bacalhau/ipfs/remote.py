"""An external IPFS node (Kubo, or js-ipfs which serves the same RPC API) used through its HTTP RPC API,
for `bacalhau serve --ipfs-connect MULTIADDR`.

Content still goes through this node's own blockstore, so CIDs are the ones our importer makes: what we
publish is pushed block by block (`block/put`, each answer checked against the CID we computed) and pinned
(`pin/add`); what we fetch comes block by block (`block/get`), each verified against its CID as it is stored.
ipfshttpclient refuses every Kubo newer than 0.7 by its version check, so this is a small httpx client.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import trio

from bacalhau.errors import BacalhauError, NotFoundError, TransportError, UserError, first_leaf
from bacalhau.ipfs.blockstore import Blockstore, codec_of, multihash_of
from bacalhau.ipfs.dagpb import decode_links
from bacalhau.ipfs.unixfs import cid_str, cid_to_bytes

log = logging.getLogger(__name__)
BLOCK_TIMEOUT = 30.0          # one block/get: the external node may have to find the block on its network
IN_FLIGHT = 16                # block requests at once


def api_url(maddr: str) -> str:
    """/ip4/127.0.0.1/tcp/5001 (or /dns4/host/tcp/5001) -> http://127.0.0.1:5001"""
    parts = maddr.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp" \
            or not parts[3].isdigit():
        raise UserError(f"--ipfs-connect wants the RPC API's multiaddr, like /ip4/127.0.0.1/tcp/5001, not {maddr!r}")
    host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
    return f"http://{host}:{parts[3]}"


def _walk(root: bytes, store: Blockstore) -> list[bytes]:
    """Every distinct block of the DAG, once: a DAG may link one child many times."""
    order, todo, seen = [], [root], {root}
    while todo:
        cid = todo.pop()
        order.append(cid)
        if codec_of(cid) == 0x70:
            for link in decode_links(store.get(cid)):
                if link.cid not in seen:
                    seen.add(link.cid)
                    todo.append(link.cid)
    return order


class RemoteIpfs:
    def __init__(self, maddr: str, store: Blockstore) -> None:
        self.maddr = maddr
        self._url = api_url(maddr)
        self._store = store

    async def _post(self, client: httpx.AsyncClient, command: str, *, timeout: float = BLOCK_TIMEOUT,
                    **kwargs: Any) -> httpx.Response:
        try:
            resp = await client.post(f"{self._url}/api/v0/{command}", timeout=timeout, **kwargs)
        except httpx.ConnectError:
            raise TransportError(f"cannot reach the IPFS node's RPC API at {self.maddr} ({self._url}): is it "
                                 "running? (--ipfs-connect)") from None
        except httpx.HTTPError as exc:
            raise TransportError(f"the IPFS node at {self.maddr} ({self._url}): {exc!r}") from None
        if resp.status_code >= 400:
            try:
                message = resp.json().get("Message", resp.text)
            except ValueError:
                message = resp.text
            raise NotFoundError(f"the IPFS node at {self.maddr}: {command}: {message}")
        return resp

    async def identity(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            info = (await self._post(client, "id", timeout=10)).json()
        return {"ID": info.get("ID", ""), "Addresses": info.get("Addresses") or []}

    async def check(self) -> None:
        """One clear error at start-up when nothing answers there."""
        async with httpx.AsyncClient() as client:
            await self._post(client, "version", timeout=10)

    async def push(self, root: bytes) -> int:
        """Put every block of the DAG under `root` (held here) into the external node, then pin it there."""
        cids = await trio.to_thread.run_sync(_walk, root, self._store)
        async with httpx.AsyncClient() as client:

            async def put(cid: bytes) -> None:
                data = await trio.to_thread.run_sync(self._store.get, cid)
                raw = codec_of(cid) == 0x55
                params = {"format": "raw" if raw else "dag-pb", "mhtype": "sha2-256", "version": 1 if raw else 0}
                key = (await self._post(client, "block/put", params=params, files={"file": data})).json()["Key"]
                got = cid_to_bytes(key)
                if multihash_of(got) != multihash_of(cid) or codec_of(got) != codec_of(cid):
                    raise TransportError(f"the IPFS node at {self.maddr} stored {key} for {cid_str(cid)}")

            await _bounded(put, cids)
            await self._post(client, "pin/add", params={"arg": cid_str(root)}, timeout=300)
        return len(cids)

    async def fetch(self, root: bytes, *, timeout: float = 300.0,
                    on_progress: Callable[[int], None] | None = None) -> int:
        """Get the DAG under `root` from the external node into this node's store; how many blocks came."""
        fetched = 0
        blocks: dict[bytes, bytes] = {}
        async with httpx.AsyncClient() as client:

            async def get(cid: bytes) -> None:
                if await trio.to_thread.run_sync(self._store.has, cid):
                    blocks[cid] = await trio.to_thread.run_sync(self._store.get, cid)
                    return
                resp = await self._post(client, "block/get",
                                        params={"arg": cid_str(cid), "timeout": f"{BLOCK_TIMEOUT:g}s"})
                await trio.to_thread.run_sync(self._store.put, cid, resp.content)   # verifies it
                blocks[cid] = resp.content

            with trio.fail_after(timeout):
                # each block once: two identical input files are one CID linked twice, and a batch holding it
                # twice fetched it twice and then found it gone the second time (a KeyError that ended the node)
                todo, seen = deque([root]), {root}
                while todo:
                    batch = [todo.popleft() for _ in range(min(IN_FLIGHT, len(todo)))]
                    await _bounded(get, batch)
                    for cid in batch:
                        fetched += 1
                        data = blocks.pop(cid)
                        if codec_of(cid) == 0x70:
                            for link in decode_links(data):
                                if link.cid not in seen:
                                    seen.add(link.cid)
                                    todo.append(link.cid)
                    if on_progress:
                        on_progress(fetched)
        return fetched


async def _bounded(fn: Callable[[bytes], Any], cids: list[bytes]) -> None:
    limit = trio.Semaphore(IN_FLIGHT)

    async def one(cid: bytes) -> None:
        async with limit:
            await fn(cid)

    try:
        async with trio.open_nursery() as nursery:
            for cid in cids:
                nursery.start_soon(one, cid)
    except BaseExceptionGroup as group:      # a failed block is the error: not a group of them
        first = first_leaf(group)
        if isinstance(first, BacalhauError):
            raise first from None
        raise
