"""UnixFS import, byte-for-byte with Kubo's `ipfs add -r --hidden` defaults.

CIDv0: sha2-256, 262144-byte fixed chunks, dag-pb leaves, a balanced DAG of at most 174 links per node;
CIDv1 (`--cid-version 1`): the same with raw leaves, base32. Directories become HAMT shards (fanout 256,
murmur3-x64-64 of the name) once the sum over their entries of name bytes plus link CID bytes reaches
262144. Files are read a chunk at a time; nothing holds a whole file.

`add_path(path, put=None, cid_version=0)` returns the `ipfs add` lines (CID, relative path), root last;
`put(cid_bytes, block)` receives every block (None: hash only).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK_SIZE = 262144
MAX_LINKS = 174
HAMT_THRESHOLD = 262144
HAMT_FANOUT = 256
MURMUR3_X64_64 = 0x22
DAG_PB, RAW = 0x70, 0x55
# UnixFS Data types
T_RAW, T_DIRECTORY, T_FILE, T_METADATA, T_SYMLINK, T_HAMT = range(6)

Put = Callable[[bytes, bytes], None]
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# -- encodings ------------------------------------------------------------------------------------------------

_ONE_BYTE = [bytes((i,)) for i in range(0x80)]   # most varints of a small result's blocks: a field tag, a length


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2) + _varint(len(data)) + data


def _uint_field(num: int, value: int) -> bytes:
    return _field(num, 0) + _varint(value)


def unixfs_data(kind: int, data: bytes | None = None, filesize: int | None = None,
                blocksizes: tuple[int, ...] = (), hash_type: int | None = None, fanout: int | None = None) -> bytes:
    out = _uint_field(1, kind)
    if data is not None:
        out += _bytes_field(2, data)
    if filesize is not None:
        out += _uint_field(3, filesize)
    for size in blocksizes:
        out += _uint_field(4, size)
    if hash_type is not None:
        out += _uint_field(5, hash_type)
    if fanout is not None:
        out += _uint_field(6, fanout)
    return out


@dataclass(frozen=True)
class Link:
    cid: bytes          # binary CID
    name: str
    tsize: int


def dag_pb(data: bytes, links: list[Link]) -> bytes:
    """dag-pb PBNode: links first (field 2), then data (field 1), as the canonical form requires."""
    out = bytearray()
    for link in links:
        body = _bytes_field(1, link.cid) + _bytes_field(2, link.name.encode()) + _uint_field(3, link.tsize)
        out += _bytes_field(2, body)
    out += _bytes_field(1, data)
    return bytes(out)


def make_cid(block: bytes, codec: int, version: int) -> bytes:
    mh = b"\x12\x20" + hashlib.sha256(block).digest()
    if version == 0:
        return mh
    return b"\x01" + _varint(codec) + mh


def cid_str(cid: bytes) -> str:
    if cid[0] == 0x12:  # CIDv0: the bare multihash, base58btc
        n = int.from_bytes(cid, "big")
        out = ""
        while n:
            n, r = divmod(n, 58)
            out = _B58[r] + out
        return "1" * (len(cid) - len(cid.lstrip(b"\0"))) + out
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


# -- the importer ---------------------------------------------------------------------------------------------

class Reader(Protocol):
    """What a file's content is read from: an open binary file, or a wrapper that counts (ipfs/publish.py)."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class _Node:
    cid: bytes
    tsize: int          # cumulative size of the block and everything under it
    filesize: int       # bytes of file content under it (files only)


class Importer:
    def __init__(self, put: Put | None = None, cid_version: int = 0) -> None:
        self._put = put
        self.version = cid_version
        self.raw_leaves = cid_version == 1

    def _store(self, block: bytes, codec: int) -> bytes:
        cid = make_cid(block, codec, self.version)
        if self._put is not None:
            self._put(cid, block)
        return cid

    # files: Kubo's balanced layout
    def _leaf(self, chunk: bytes) -> _Node:
        if self.raw_leaves:
            return _Node(self._store(chunk, RAW), len(chunk), len(chunk))
        block = dag_pb(unixfs_data(T_FILE, chunk if chunk else None, len(chunk)), [])
        return _Node(self._store(block, DAG_PB), len(block), len(chunk))

    def _internal(self, children: list[_Node]) -> _Node:
        filesize = sum(c.filesize for c in children)
        data = unixfs_data(T_FILE, None, filesize, tuple(c.filesize for c in children))
        block = dag_pb(data, [Link(c.cid, "", c.tsize) for c in children])
        return _Node(self._store(block, DAG_PB), len(block) + sum(c.tsize for c in children), filesize)

    def add_file(self, path: Path) -> _Node:
        with open(path, "rb") as f:
            return self.add_reader(f)

    def add_reader(self, f: Reader) -> _Node:
        """A file from an open reader (read to its end; the caller opened it, e.g. without following links)."""
        chunks = _chunks(f)
        first = next(chunks, None)
        if first is None:
            if self.raw_leaves:
                return _Node(self._store(b"", RAW), 0, 0)
            block = dag_pb(unixfs_data(T_FILE, None, 0), [])
            return _Node(self._store(block, DAG_PB), len(block), 0)
        pending = _Peekable(chunks)
        root = self._leaf(first)
        depth = 1
        while not pending.done():
            root = self._fill([root], depth, pending)
            depth += 1
        return root

    def _fill(self, children: list[_Node], depth: int, pending: _Peekable) -> _Node:
        while len(children) < MAX_LINKS and not pending.done():
            if depth == 1:
                children.append(self._leaf(pending.next()))
            else:
                children.append(self._fill([], depth - 1, pending))
        return self._internal(children)

    def add_symlink(self, path: Path) -> _Node:
        block = dag_pb(unixfs_data(T_SYMLINK, os.readlink(path).encode()), [])
        return _Node(self._store(block, DAG_PB), len(block), 0)

    # directories: plain, or a HAMT once they are big
    def add_dir(self, entries: list[tuple[str, _Node]]) -> _Node:
        estimate = sum(len(name.encode()) + len(node.cid) for name, node in entries)
        if estimate >= HAMT_THRESHOLD:
            return self._hamt(entries)
        links = sorted((Link(n.cid, name, n.tsize) for name, n in entries), key=lambda lk: lk.name.encode())
        block = dag_pb(unixfs_data(T_DIRECTORY), links)
        return _Node(self._store(block, DAG_PB), len(block) + sum(lk.tsize for lk in links), 0)

    def _hamt(self, entries: list[tuple[str, _Node]], depth: int = 0) -> _Node:
        import mmh3

        slots: dict[int, list[tuple[str, _Node, bytes]]] = {}
        for name, node in entries:
            digest = mmh3.hash64(name.encode(), seed=0, x64arch=True, signed=False)[0].to_bytes(8, "big")
            slots.setdefault(digest[depth], []).append((name, node, digest))
        links = []
        bitfield = 0
        for index in sorted(slots):
            bitfield |= 1 << index
            items = slots[index]
            prefix = f"{index:02X}"
            if len(items) == 1:
                name, node, _ = items[0]
                links.append(Link(node.cid, prefix + name, node.tsize))
            else:
                child = self._hamt([(name, node) for name, node, _ in items], depth + 1)
                links.append(Link(child.cid, prefix, child.tsize))
        data = unixfs_data(T_HAMT, bitfield.to_bytes(HAMT_FANOUT // 8, "big").lstrip(b"\0") or b"\0",
                           hash_type=MURMUR3_X64_64, fanout=HAMT_FANOUT)
        block = dag_pb(data, links)
        return _Node(self._store(block, DAG_PB), len(block) + sum(lk.tsize for lk in links), 0)


class _Peekable:
    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._next = next(it, None)

    def done(self) -> bool:
        return self._next is None

    def next(self) -> bytes:
        value = self._next
        assert value is not None
        self._next = next(self._it, None)
        return value


def _chunks(f: Reader) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        if len(chunk) < CHUNK_SIZE:   # a short read is not the end: fill the chunk as Kubo's splitter does
            while len(chunk) < CHUNK_SIZE and (more := f.read(CHUNK_SIZE - len(chunk))):
                chunk += more
        yield chunk


def add_path(path: str | Path, put: Put | None = None, cid_version: int = 0) -> list[tuple[str, str]]:
    """Import a file or a directory tree; the `ipfs add -r --hidden` output lines, root last."""
    importer = Importer(put, cid_version)
    root = Path(path)
    lines: list[tuple[str, str]] = []

    def walk(p: Path, rel: str) -> _Node:
        if p.is_symlink():
            node = importer.add_symlink(p)
        elif p.is_dir():
            entries = []
            for child in sorted(os.listdir(p)):
                entries.append((child, walk(p / child, f"{rel}/{child}")))
            node = importer.add_dir(entries)
        else:
            node = importer.add_file(p)
        lines.append((cid_str(node.cid), rel))
        return node

    walk(root, root.name)
    return lines


def cid_to_bytes(text: str) -> bytes:
    """Parse a CIDv0 (base58btc 'Qm...') or a CIDv1 in base32 ('b...')."""
    if text.startswith("Qm"):
        n = 0
        for ch in text:
            n = n * 58 + _B58.index(ch)
        return n.to_bytes(34, "big")
    if text.startswith("b"):
        body = text[1:].upper()
        return base64.b32decode(body + "=" * (-len(body) % 8))
    raise ValueError(f"unsupported CID {text!r} (CIDv0 Qm... or base32 CIDv1 b...)")
