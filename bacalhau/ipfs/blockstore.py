"""A persistent blockstore with pins, under a node's repo dir. Synchronous (file I/O): async callers go
through `trio.to_thread`.

    blocks/<last 2 chars>/<base32 multihash>   one file per block, written to a temp file then renamed,
                                               so a crash never leaves a block whose bytes miss its CID
    pins                                       recursively pinned roots, one CID a line (replaced atomically)
Every read is checked against the CID's sha2-256; `gc()` removes blocks no pin reaches.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from bacalhau.errors import BacalhauError, NotFoundError
from bacalhau.ipfs.dagpb import decode_links


class CorruptBlockError(BacalhauError):
    pass


def multihash_of(cid: bytes) -> bytes:
    if cid[0] == 0x12:
        return cid                      # CIDv0 is the bare multihash
    i = 1
    while cid[i] & 0x80:                # skip the codec varint
        i += 1
    return cid[i + 1:]


def codec_of(cid: bytes) -> int:
    if cid[0] == 0x12:
        return 0x70
    value, shift, i = 0, 0, 1
    while True:
        b = cid[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value
        shift += 7


class Blockstore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blocks = root / "blocks"
        self._pins = root / "pins"
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._pin_lock = threading.Lock()   # publishes run in worker threads, several at once
        self._shards: set[Path] = set()
        self._tmp_names = itertools.count()  # next() on it is atomic under the GIL: threads get distinct names

    def _path(self, cid: bytes) -> Path:
        name = base64.b32encode(multihash_of(cid)).decode().rstrip("=")
        return self._blocks / name[-2:] / name

    def has(self, cid: bytes) -> bool:
        return self._path(cid).exists()

    def put(self, cid: bytes, block: bytes, *, hashed: bool = False) -> None:
        """hashed: the caller computed `cid` from these very bytes (a bitswap block), so no second check."""
        path = self._path(cid)
        if path.exists():
            return
        mh = multihash_of(cid)
        if not hashed and (mh[:2] != b"\x12\x20" or hashlib.sha256(block).digest() != mh[2:]):
            raise CorruptBlockError("block does not match its CID")
        if path.parent not in self._shards:
            path.parent.mkdir(exist_ok=True)
            self._shards.add(path.parent)
        tmp = path.parent / f".tmp-{os.getpid()}-{next(self._tmp_names)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, cid: bytes, *, verify: bool = True) -> bytes:
        """verify=False where the reader checks anyway: a block served to a peer is hashed by the peer (as
        Kubo serves, HashOnRead off)."""
        try:
            block = self._path(cid).read_bytes()
        except FileNotFoundError:
            raise NotFoundError("block not in this store") from None
        if verify and hashlib.sha256(block).digest() != multihash_of(cid)[2:]:
            raise CorruptBlockError(f"block {base64.b32encode(multihash_of(cid)).decode()} is corrupt on disk")
        return block

    def put_many(self, blocks: list[tuple[bytes, bytes]], *, hashed: bool = False) -> None:
        for cid, block in blocks:
            self.put(cid, block, hashed=hashed)

    def get_many(self, cids: list[bytes], *, verify: bool = True) -> dict[bytes, bytes]:
        """The blocks of these that the store holds."""
        found = {}
        for cid in cids:
            try:
                found[cid] = self.get(cid, verify=verify)
            except NotFoundError:
                pass
        return found

    def delete(self, cid: bytes) -> None:
        self._path(cid).unlink(missing_ok=True)

    def all_keys(self) -> Iterator[Path]:
        for shard in self._blocks.iterdir():
            for f in shard.iterdir():
                if not f.name.startswith(".tmp-"):
                    yield f

    # -- pins -----------------------------------------------------------------------------------------------

    def pins(self) -> list[bytes]:
        if not self._pins.exists():
            return []
        return [bytes.fromhex(line) for line in self._pins.read_text().split()]

    def _write_pins(self, pins: list[bytes]) -> None:
        tmp = self._pins.with_suffix(".tmp")
        tmp.write_text("".join(p.hex() + "\n" for p in pins))
        os.replace(tmp, self._pins)

    def pin(self, cid: bytes) -> None:
        with self._pin_lock:
            pins = self.pins()
            if cid not in pins:
                self._write_pins([*pins, cid])

    def unpin(self, cid: bytes) -> None:
        with self._pin_lock:
            self._write_pins([p for p in self.pins() if p != cid])

    def gc(self) -> int:
        """Remove every block no pin reaches (and temp files a crash left); return how many blocks went."""
        keep: set[Path] = set()
        with self._pin_lock:
            stack = list(self.pins())
        while stack:
            cid = stack.pop()
            path = self._path(cid)
            if path in keep or not path.exists():
                continue
            keep.add(path)
            if codec_of(cid) == 0x70:
                stack.extend(link.cid for link in decode_links(self.get(cid)))
        removed = 0
        for shard in self._blocks.iterdir():
            for f in shard.iterdir():
                if f.name.startswith(".tmp-"):
                    f.unlink()
                elif f not in keep:
                    f.unlink()
                    removed += 1
        return removed
