"""Bitswap 1.2 over the node's libp2p host: serve blocks we hold, fetch DAGs from peers that have them.

Messages are uvarint-length-prefixed protobufs on `/ipfs/bitswap/1.2.0`; as Kubo does, every message goes
out on a new stream of the sender's (a reply never rides on the requester's stream, which Kubo never reads).
A fetch keeps many wants in flight: it asks every connected peer for the next batch of missing blocks and
walks the DAG as blocks arrive; every block is verified against its CID before it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bacalhau.errors import BacalhauError, NotFoundError, TransportError
from bacalhau.ipfs.blockstore import Blockstore, codec_of
from bacalhau.ipfs.dagpb import _fields, _varint, decode_links
from bacalhau.ipfs.unixfs import _bytes_field, _uint_field, cid_str, make_cid
from bacalhau.ipfs.unixfs import _varint as _enc_varint

log = logging.getLogger(__name__)
PROTOCOL = "/ipfs/bitswap/1.2.0"
MAX_MESSAGE = 4 * 1024 * 1024 + 4096
WANT_BATCH = 64
WANT_BLOCK, WANT_HAVE = 0, 1
HAVE, DONT_HAVE = 0, 1


def _cid_prefix(cid: bytes) -> bytes:
    """version, codec, multihash type and length, as the Block.prefix field carries them."""
    if cid[0] == 0x12:
        return b"\x00\x70\x12\x20"
    return b"\x01" + _enc_varint(codec_of(cid)) + b"\x12\x20"


def encode_message(wants: list[bytes] = (), blocks: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
                   dont_have: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    out = b""
    if wants:
        entries = b"".join(_bytes_field(1, _bytes_field(1, c) + _uint_field(2, 1) + _uint_field(4, WANT_BLOCK)
                                        + _uint_field(5, 1)) for c in wants)
        out += _bytes_field(1, entries)
    for cid, data in blocks:
        out += _bytes_field(3, _bytes_field(1, _cid_prefix(cid)) + _bytes_field(2, data))
    for cid in dont_have:
        out += _bytes_field(4, _bytes_field(1, cid) + _uint_field(2, DONT_HAVE))
    return out


def decode_message(buf: bytes) -> tuple[list[tuple[bytes, bool]], list[tuple[bytes, bytes]], list[bytes]]:
    """(wants as (cid, cancel), blocks as (cid, data), cids the peer does not have)."""
    wants, blocks, dont_have = [], [], []
    for num, value in _fields(buf):
        if num == 1 and isinstance(value, bytes):
            for n, entry in _fields(value):
                if n == 1 and isinstance(entry, bytes):
                    cid, cancel = b"", False
                    for en, ev in _fields(entry):
                        if en == 1 and isinstance(ev, bytes):
                            cid = ev
                        elif en == 3 and isinstance(ev, int):
                            cancel = bool(ev)
                    wants.append((cid, cancel))
        elif num == 2 and isinstance(value, bytes):      # bitswap 1.0 blocks: CIDv0 only
            blocks.append((make_cid(value, 0x70, 0), value))
        elif num == 3 and isinstance(value, bytes):
            prefix, data = b"", b""
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    prefix = v
                elif n == 2 and isinstance(v, bytes):
                    data = v
            version, i = _varint(prefix, 0)
            codec, _ = _varint(prefix, i)
            blocks.append((make_cid(data, codec, version), data))
        elif num == 4 and isinstance(value, bytes):
            cid, kind = b"", HAVE
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    cid = v
                elif n == 2 and isinstance(v, int):
                    kind = v
            if kind == DONT_HAVE:
                dont_have.append(cid)
    return wants, blocks, dont_have


@dataclass
class _Want:
    event: trio.Event = field(default_factory=trio.Event)
    asked: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    arrived: bool = False


class Bitswap:
    def __init__(self, host: Any, store: Blockstore,
                 discover: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        self._host = host
        self._store = store
        self._discover = discover     # connects to more of the cluster when the connected peers lack a block
        self._waiting: dict[bytes, _Want] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[Bitswap] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._host.set_stream_handler(PROTOCOL, self._on_stream)
            task_status.started(self)
            await trio.sleep_forever()

    async def _send(self, peer_id: str, message: bytes) -> None:
        stream = await self._host.open_stream(peer_id, PROTOCOL)
        try:
            await stream.write(_enc_varint(len(message)) + message)
            await stream.close_write()
        finally:
            await stream.close()

    async def _on_stream(self, peer_id: str, stream: Any) -> None:
        while True:
            head = b""
            while not head or head[-1] & 0x80:
                byte = await stream.read(1)
                if not byte:
                    return
                head += byte
            length, _ = _varint(head, 0)
            if length > MAX_MESSAGE:
                raise TransportError(f"bitswap message of {length} bytes from {peer_id}")
            wants, blocks, dont_have = decode_message(await stream.read_exactly(length))
            for cid, data in blocks:
                want = self._waiting.get(cid)
                if want is not None and not want.arrived:
                    await trio.to_thread.run_sync(self._store.put, cid, data)
                    want.arrived = True
                    want.event.set()
            for cid in dont_have:
                want = self._waiting.get(cid)
                if want is not None:
                    want.refused.add(peer_id)
                    if want.asked <= want.refused:
                        want.event.set()
            wanted = [cid for cid, cancel in wants if not cancel]
            if wanted:
                assert self._nursery is not None
                self._nursery.start_soon(self._answer, peer_id, wanted)

    async def _answer(self, peer_id: str, wanted: list[bytes]) -> None:
        found, missing = [], []
        for cid in wanted:
            try:
                found.append((cid, await trio.to_thread.run_sync(self._store.get, cid)))
            except (NotFoundError, ValueError, IndexError):
                missing.append(cid)
        try:
            # stay under the message limit: several messages if the blocks are big
            batch: list[tuple[bytes, bytes]] = []
            size = 0
            for cid, data in found:
                if batch and size + len(data) > MAX_MESSAGE - 4096:
                    await self._send(peer_id, encode_message(blocks=batch))
                    batch, size = [], 0
                batch.append((cid, data))
                size += len(data)
            if batch or missing:
                await self._send(peer_id, encode_message(blocks=batch, dont_have=missing))
        except BacalhauError as exc:
            log.info("could not answer %s: %s", peer_id, exc)

    async def fetch(self, root: bytes, *, timeout: float = 60.0,
                    on_progress: Callable[[int], None] | None = None) -> int:
        """Fetch the DAG under `root` into the store from connected peers; return how many blocks came."""
        fetched = 0
        todo = [root]
        with trio.fail_after(timeout):
            while todo:
                batch, todo = todo[:WANT_BATCH * 4], todo[WANT_BATCH * 4:]
                missing = [c for c in batch if not self._store.has(c)]
                peers = self._host.connected_peers()
                if missing and not peers:
                    raise NotFoundError("no peer is connected to fetch blocks from")
                wants = {c: self._waiting.setdefault(c, _Want()) for c in missing}
                for want in wants.values():
                    want.asked.update(peers)
                for i in range(0, len(missing), WANT_BATCH):
                    message = encode_message(wants=missing[i:i + WANT_BATCH])
                    for peer in peers:
                        try:
                            await self._send(peer, message)
                        except BacalhauError as exc:
                            log.debug("want to %s failed: %s", peer, exc)
                try:
                    for cid, want in wants.items():
                        await want.event.wait()
                        if not want.arrived and self._discover is not None:
                            reachable = {*await self._discover(), *self._host.connected_peers()}
                            more = [p for p in reachable if p not in want.asked]
                            if more:
                                want.event = trio.Event()
                                want.asked.update(more)
                                for peer in more:
                                    await self._send(peer, encode_message(wants=[cid]))
                                await want.event.wait()
                        if not want.arrived:
                            raise NotFoundError(f"no connected peer has block {cid_str(cid)}")
                        fetched += 1
                        if on_progress:
                            on_progress(fetched)
                finally:
                    for cid in wants:
                        self._waiting.pop(cid, None)
                for cid in batch:
                    if codec_of(cid) == 0x70:
                        block = await trio.to_thread.run_sync(self._store.get, cid)
                        todo.extend(link.cid for link in decode_links(block))
        return fetched
