"""The files of a UnixFS DAG, for content detection and per-file routing: listed from the directory blocks and
each file's root block only (a file's size is its root's `filesize`), and the first bytes of one file read a
block at a time, never the rest of it.

The DAG may come from anyone, so it is walked under caps: each block decoded once (a memo keyed by CID), a
budget of block visits (a diamond of directories linked twice per level costs visits, and is refused by
them), a cap on files and on directory depth, HAMT shards no deeper than their hash, names checked as the
exporter checks them (one path component, UTF-8, none twice in a directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bacalhau.errors import BacalhauError, ProtocolError
from bacalhau.ipfs.blockstore import codec_of
from bacalhau.ipfs.dagpb import PBLink, decode, decode_unixfs
from bacalhau.ipfs.exporter import check_name
from bacalhau.ipfs.unixfs import T_DIRECTORY, T_FILE, T_HAMT, T_RAW, T_SYMLINK, cid_str

DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_VISITS = 1_000_000
DEFAULT_MAX_DEPTH = 64
MAX_FILE_DEPTH = 64
RAW_CODEC = 0x55


class BlockGetter(Protocol):
    def get(self, cid: bytes) -> bytes: ...


@dataclass(frozen=True)
class FileEntry:
    path: str       # relative to the root, '/'-separated; "" when the root is itself a file
    cid: bytes
    tsize: int      # the link's cumulative size, as the parent directory gave it (0 for a file root)
    size: int       # bytes of content (the root block's UnixFS filesize)
    error: str = "" # why this entry could not be read (its block missing or malformed): it is this entry's


@dataclass(frozen=True)
class _Node:
    kind: int
    data: bytes
    links: list[PBLink]
    filesize: int


class Tree:
    """One DAG's blocks, decoded once each."""

    def __init__(self, blocks: BlockGetter, *, max_files: int = DEFAULT_MAX_FILES,
                 max_visits: int = DEFAULT_MAX_VISITS, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self._blocks = blocks
        self._nodes: dict[bytes, _Node] = {}
        self.max_files, self.max_visits, self.max_depth = max_files, max_visits, max_depth
        self._visits = 0

    def node(self, cid: bytes) -> _Node:
        got = self._nodes.get(cid)
        if got is not None:
            return got
        block = self._blocks.get(cid)
        if codec_of(cid) == RAW_CODEC:
            got = _Node(T_RAW, block, [], len(block))
        else:
            try:
                data, links = decode(block)
                fs = decode_unixfs(data)
            except (ProtocolError, ValueError) as exc:
                raise ProtocolError(f"block {cid_str(cid)} is not UnixFS: {exc}") from None
            size = fs.filesize if fs.filesize is not None else len(fs.data)
            got = _Node(fs.type, fs.data, links, size)
        if got.kind in (T_FILE, T_RAW):        # a listing keeps no content (head() reads its own blocks)
            got = _Node(got.kind, b"", [], got.filesize)
        self._nodes[cid] = got
        return got

    def is_file(self, cid: bytes) -> bool:
        return self.node(cid).kind in (T_FILE, T_RAW)

    def _visit(self) -> None:
        self._visits += 1
        if self._visits > self.max_visits:
            raise ProtocolError(f"the DAG takes over {self.max_visits} block visits to list")

    def files(self, root: bytes) -> list[FileEntry]:
        """Every file under `root` (symlinks are no files and are left out), sorted by path."""
        top = self.node(root)
        if top.kind in (T_FILE, T_RAW):
            return [FileEntry("", root, 0, top.filesize)]
        if top.kind not in (T_DIRECTORY, T_HAMT):
            raise ProtocolError(f"{cid_str(root)} is neither a file nor a directory")
        out: list[FileEntry] = []
        self._walk(root, "", 0, out)
        return sorted(out, key=lambda e: e.path.encode())

    def _walk(self, cid: bytes, prefix: str, depth: int, out: list[FileEntry]) -> None:
        if depth > self.max_depth:
            raise ProtocolError(f"directories nested deeper than {self.max_depth}")
        for name, child, tsize in self.entries(cid):
            self._visit()
            path = prefix + name
            try:
                node = self.node(child)
            except BacalhauError as exc:        # a block of this entry only: the others are listed
                out.append(FileEntry(path, child, tsize, 0, str(exc)))
                continue
            if node.kind in (T_FILE, T_RAW):
                out.append(FileEntry(path, child, tsize, node.filesize))
                if len(out) > self.max_files:
                    raise ProtocolError(f"the content holds over {self.max_files} files")
            elif node.kind in (T_DIRECTORY, T_HAMT):
                self._walk(child, path + "/", depth + 1, out)
            elif node.kind != T_SYMLINK:
                raise ProtocolError(f"{path!r}: unsupported UnixFS type {node.kind}")

    def entries(self, cid: bytes) -> list[tuple[str, bytes, int]]:
        """A directory's (name, CID, tsize), HAMT shards flattened; every name checked, none twice."""
        node = self.node(cid)
        if node.kind == T_HAMT:
            pairs = list(self._hamt(node.links, 0))
        else:
            pairs = [(link.name, link.cid, link.tsize) for link in node.links]
        seen: set[str] = set()
        for name, _, _ in pairs:
            check_name(name, cid)
            if name in seen:
                raise ProtocolError(f"directory {cid_str(cid)} names {name!r} twice")
            seen.add(name)
        return pairs

    def _hamt(self, links: list[PBLink], level: int) -> list[tuple[str, bytes, int]]:
        if level > 8:      # 64 bits of hash, 8 per level
            raise ProtocolError("a HAMT directory nested deeper than its hash")
        out: list[tuple[str, bytes, int]] = []
        for link in links:
            self._visit()
            if len(link.name) == 2:             # a sub-shard: just its index
                sub = self.node(link.cid)
                if sub.kind != T_HAMT:
                    raise ProtocolError(f"HAMT shard {link.name!r} is not a shard")
                out.extend(self._hamt(sub.links, level + 1))
            elif len(link.name) < 2:
                raise ProtocolError(f"HAMT entry without its index: {link.name!r}")
            else:
                out.append((link.name[2:], link.cid, link.tsize))
        return out

    def head(self, cid: bytes, limit: int) -> bytes:
        """The first `limit` bytes of a file, depth first, reading only the blocks they are in."""
        out = bytearray()
        self._head(cid, limit, out, 0)
        return bytes(out)

    def _file_part(self, cid: bytes, level: int) -> tuple[bytes, Any, list[Any]]:
        """A block inside a file, `level` deep: its data, and for a UnixFS node the node and its links (a raw
        leaf: None and no links). Each one counts against the walk's budget."""
        if level > MAX_FILE_DEPTH:
            raise ProtocolError(f"a file DAG deeper than {MAX_FILE_DEPTH} levels (at {cid_str(cid)})")
        self._visit()
        block = self._blocks.get(cid)
        if codec_of(cid) == RAW_CODEC:
            return block, None, []
        try:
            data, links = decode(block)
            fs = decode_unixfs(data)
        except (ProtocolError, ValueError) as exc:
            raise ProtocolError(f"block {cid_str(cid)} is not UnixFS: {exc}") from None
        if fs.type not in (T_FILE, T_RAW):
            raise ProtocolError(f"{cid_str(cid)} inside a file is not file data")
        return fs.data, fs, links

    def _head(self, cid: bytes, limit: int, out: bytearray, level: int) -> None:
        data, _, links = self._file_part(cid, level)
        out += data[:limit - len(out)]
        for link in links:
            if len(out) >= limit:
                return
            self._head(link.cid, limit, out, level + 1)

    def read(self, cid: bytes, offset: int, length: int) -> bytes:
        """`length` bytes of a file from `offset`, reading only the blocks they are in (a file node's
        blocksizes say which children hold what); at most `length` bytes even where the sizes lie."""
        out = bytearray()
        self._read(cid, 0, offset, offset + length, out, 0)
        return bytes(out[:length])

    def _read(self, cid: bytes, at: int, start: int, end: int, out: bytearray, level: int) -> None:
        data, fs, links = self._file_part(cid, level)
        if fs is None:
            out += data[max(0, start - at):max(0, end - at)]
            return
        if len(fs.blocksizes) != len(links):
            raise ProtocolError(f"file node {cid_str(cid)} has {len(links)} links and {len(fs.blocksizes)} sizes")
        out += data[max(0, start - at):max(0, end - at)]
        pos = at + len(data)
        for link, size in zip(links, fs.blocksizes, strict=True):
            if pos >= end or len(out) >= end - start:
                return
            if pos + size > start:
                self._read(link.cid, pos, start, end, out, level + 1)
            pos += size
