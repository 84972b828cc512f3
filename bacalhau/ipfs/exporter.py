"""UnixFS export: files, plain and HAMT-sharded directories and symlinks back to disk, streaming, every
block verified against its CID by the blockstore.

A DAG comes from the network, so nothing in it is trusted:
- It is measured first, each distinct block read once (a memo keyed by CID): entries, bytes and blocks the
  export would produce, and its depth, are checked against `Limits` before anything is written. A DAG that
  repeats a child (legal: two names for one CID, or one chunk twice in a file) costs one read per distinct
  block here, though its export writes every copy; a diamond 40 deep is refused by these counts, not walked.
- Everything is created relative to directory file descriptors this export made: directories with mkdir,
  files with O_CREAT|O_EXCL|O_NOFOLLOW, subdirectories opened with O_NOFOLLOW|O_DIRECTORY. No path is ever
  resolved through something the DAG named, so a symlink in the DAG can point anywhere: it is written as a
  link, last (after every file and directory), and never followed.
- An entry name must be one path component of UTF-8 without NUL; names repeat in no directory. A bad one ends
  the export with a ProtocolError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bacalhau.errors import BacalhauError, ProtocolError
from bacalhau.ipfs.blockstore import codec_of
from bacalhau.ipfs.dagpb import PBLink, decode, decode_unixfs
from bacalhau.ipfs.unixfs import T_DIRECTORY, T_FILE, T_HAMT, T_RAW, T_SYMLINK, cid_str

DEFAULT_MAX_BYTES = 10 * 1024**3       # file content an export writes in all
DEFAULT_MAX_ENTRIES = 1_000_000        # files, directories and symlinks
DEFAULT_MAX_DEPTH = 256                # directories within directories
DEFAULT_MAX_BLOCKS = 4_000_000         # block visits (a file of 10 GiB in 256 KiB chunks is 40,961)
MAX_FILE_DEPTH = 64                    # levels of a file's DAG (Kubo's balanced layout needs 4 for 1 TiB)
RAW = 0x55
O_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BlockGetter(Protocol):
    def get(self, cid: bytes) -> bytes: ...


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_blocks: int = DEFAULT_MAX_BLOCKS


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class _Size:
    entries: int
    bytes: int
    blocks: int
    depth: int      # directory levels below


class _Dag:
    """Decoded blocks of one DAG, each read once; what a subtree would cost to export, memoized."""

    def __init__(self, blocks: BlockGetter, limits: Limits) -> None:
        self._blocks = blocks
        self.limits = limits
        self._nodes: dict[bytes, tuple[int, bytes, list[PBLink]]] = {}
        self._sizes: dict[bytes, _Size] = {}
        self._file_sizes: dict[bytes, tuple[int, int, int]] = {}

    def node(self, cid: bytes) -> tuple[int, bytes, list[PBLink]]:
        """(UnixFS type, data, links); a raw block is a file of its bytes. Leaves are not cached: a file's
        data would pile up in memory, and a repeated leaf is re-read when written."""
        got = self._nodes.get(cid)
        if got is not None:
            return got
        block = self._blocks.get(cid)
        if codec_of(cid) == RAW:
            return T_RAW, block, []
        try:
            data, links = decode(block)
            fs = decode_unixfs(data)
        except (ProtocolError, ValueError) as exc:
            raise ProtocolError(f"block {cid_str(cid)} is not UnixFS: {exc}") from None
        node = (fs.type, fs.data, links)
        if links:
            self._nodes[cid] = node
        return node

    def file_size(self, cid: bytes, level: int = 0) -> tuple[int, int, int]:
        """(bytes, block visits, DAG depth) of a file."""
        got = self._file_sizes.get(cid)
        if got is not None:
            return got
        if level > MAX_FILE_DEPTH:
            raise ProtocolError(f"a file DAG deeper than {MAX_FILE_DEPTH} levels (at {cid_str(cid)})")
        kind, data, links = self.node(cid)
        if kind not in (T_FILE, T_RAW):
            raise ProtocolError(f"{cid_str(cid)} inside a file is not file data")
        size, visits, depth = len(data), 1, 0
        for link in links:
            s, v, d = self.file_size(link.cid, level + 1)
            size, visits, depth = size + s, visits + v, max(depth, d + 1)
            self._check(size, visits)
        got = self._file_sizes[cid] = (size, visits, depth)
        return got

    def size(self, cid: bytes, level: int = 0) -> _Size:
        """What exporting `cid` would make: entries, bytes, block visits, directory depth."""
        got = self._sizes.get(cid)
        if got is not None:
            return got
        if level > self.limits.max_depth:
            raise ProtocolError(f"directories nested deeper than {self.limits.max_depth}")
        kind, _, links = self.node(cid)
        if kind in (T_FILE, T_RAW):
            nbytes, visits, _ = self.file_size(cid)
            got = _Size(1, nbytes, visits, 0)
        elif kind == T_SYMLINK:
            got = _Size(1, 0, 1, 0)
        elif kind in (T_DIRECTORY, T_HAMT):
            entries, nbytes, visits, depth = 1, 0, 1, 0
            for _, child in self.entries(cid):
                s = self.size(child, level + 1)
                entries, nbytes, visits = entries + s.entries, nbytes + s.bytes, visits + s.blocks
                depth = max(depth, s.depth + 1)
                self._check(nbytes, visits, entries)
            got = _Size(entries, nbytes, visits, depth)
        else:
            raise ProtocolError(f"{cid_str(cid)}: unsupported UnixFS type {kind}")
        self._sizes[cid] = got
        return got

    def _check(self, nbytes: int, visits: int, entries: int = 0) -> None:
        lim = self.limits
        if nbytes > lim.max_bytes:
            raise ProtocolError(f"the content is over the export limit of {lim.max_bytes} bytes")
        if visits > lim.max_blocks:
            raise ProtocolError(f"the content is over the export limit of {lim.max_blocks} blocks")
        if entries > lim.max_entries:
            raise ProtocolError(f"the content is over the export limit of {lim.max_entries} entries")

    def entries(self, cid: bytes) -> list[tuple[str, bytes]]:
        """A directory's (name, CID) pairs, HAMT shards flattened; every name checked, none twice."""
        kind, _, links = self.node(cid)
        if kind == T_HAMT:
            pairs = list(self._hamt(links, 0))
        else:
            pairs = [(link.name, link.cid) for link in links]
        seen: set[str] = set()
        for name, _ in pairs:
            check_name(name, cid)
            if name in seen:
                raise ProtocolError(f"directory {cid_str(cid)} names {name!r} twice")
            seen.add(name)
        return pairs

    def _hamt(self, links: list[PBLink], level: int) -> Iterator[tuple[str, bytes]]:
        if level > 8:      # 64 bits of hash, 8 per level
            raise ProtocolError("a HAMT directory nested deeper than its hash")
        for link in links:
            if len(link.name) == 2:             # a sub-shard: just its index
                kind, _, sub = self.node(link.cid)
                if kind != T_HAMT:
                    raise ProtocolError(f"HAMT shard {link.name!r} is not a shard")
                yield from self._hamt(sub, level + 1)
            elif len(link.name) < 2:
                raise ProtocolError(f"HAMT entry without its index: {link.name!r}")
            else:
                yield link.name[2:], link.cid


def check_name(name: str, where: bytes) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ProtocolError(f"directory {cid_str(where)} holds an unsafe entry name {name!r}")
    try:
        name.encode()
    except UnicodeEncodeError:       # dagpb decodes a name that is not UTF-8 with surrogate escapes
        raise ProtocolError(f"directory {cid_str(where)} holds an entry name that is not UTF-8: "
                            f"{name.encode('utf-8', 'surrogateescape')!r}") from None


def measure(cid: bytes, blocks: BlockGetter, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(entries, bytes) an export of `cid` would write; ProtocolError when over `limits` or malformed."""
    size = _Dag(blocks, limits).size(cid)
    return size.entries, size.bytes


def cat(cid: bytes, blocks: BlockGetter, limits: Limits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """A file's bytes, in order, a block at a time; its size is checked against `limits` first."""
    dag = _Dag(blocks, limits)
    kind, _, _ = dag.node(cid)
    if kind not in (T_FILE, T_RAW):
        raise ProtocolError("not a file")
    dag.file_size(cid)
    return _file_chunks(dag, cid)


def _file_chunks(dag: _Dag, cid: bytes) -> Iterator[bytes]:
    stack = [cid]
    while stack:
        kind, data, links = dag.node(stack.pop())
        if data:
            yield data
        stack.extend(link.cid for link in reversed(links) if dag.file_size(link.cid)[0])   # empty ones skipped


def export(cid: bytes, blocks: BlockGetter, dest: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Write the content at `dest`, which must not exist (its parent must)."""
    _Export(_Dag(blocks, limits)).run(cid, dest, None)


def export_into(cid: bytes, blocks: BlockGetter, dest: Path, file_name: str,
                limits: Limits = DEFAULT_LIMITS) -> None:
    """Into the existing directory `dest`: a directory's entries, or anything else as `dest/file_name`."""
    _Export(_Dag(blocks, limits)).run(cid, dest, file_name)


class _Export:
    def __init__(self, dag: _Dag) -> None:
        self.dag = dag
        self.written = 0
        self.links: list[tuple[tuple[str, ...], str]] = []     # (path under the root fd, target): made last

    def run(self, cid: bytes, dest: Path, file_name: str | None) -> None:
        self.dag.size(cid)      # every limit and name checked before a byte is written
        try:
            self._run(cid, dest, file_name)
        except OSError as exc:
            raise BacalhauError(f"the content could not be written here: {exc.strerror or exc}") from None

    def _run(self, cid: bytes, dest: Path, file_name: str | None) -> None:
        kind, _, _ = self.dag.node(cid)
        if file_name is not None and kind in (T_DIRECTORY, T_HAMT):
            root = os.open(dest, O_DIR)
            try:
                self._fill(root, cid)
                self._make_links(root)
            finally:
                os.close(root)
            return
        if file_name is not None:
            check_name(file_name, cid)
            parent_path, name = dest, file_name
        else:
            parent_path, name = dest.parent, dest.name
        parent = os.open(parent_path, O_DIR)
        try:
            self._entry(parent, name, cid, ())
            self._make_links(parent)
        finally:
            os.close(parent)

    def _entry(self, dir_fd: int, name: str, cid: bytes, path: tuple[str, ...]) -> None:
        kind, data, _ = self.dag.node(cid)
        if kind in (T_FILE, T_RAW):
            self._file(dir_fd, name, cid)
        elif kind == T_SYMLINK:
            try:
                target = data.decode()
            except UnicodeDecodeError:
                raise ProtocolError(f"symlink {name!r} has a target that is not UTF-8") from None
            if not target or "\0" in target:
                raise ProtocolError(f"symlink {name!r} has an empty or NUL-bearing target")
            self.links.append(((*path, name), target))
        else:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            fd = os.open(name, O_DIR, dir_fd=dir_fd)
            try:
                self._fill(fd, cid, (*path, name))
            finally:
                os.close(fd)

    def _fill(self, dir_fd: int, cid: bytes, path: tuple[str, ...] = ()) -> None:
        for name, child in self.dag.entries(cid):
            self._entry(dir_fd, name, child, path)

    def _file(self, dir_fd: int, name: str, cid: bytes) -> None:
        fd = os.open(name, O_WRITE, 0o644, dir_fd=dir_fd)
        with open(fd, "wb", closefd=True) as f:
            for chunk in _file_chunks(self.dag, cid):
                self.written += len(chunk)
                if self.written > self.dag.limits.max_bytes:      # measured already; a block store could lie
                    raise ProtocolError(f"the content is over the export limit of {self.dag.limits.max_bytes} bytes")
                f.write(chunk)

    def _make_links(self, root_fd: int) -> None:
        """Symlinks last: nothing is written through one, whatever it points at."""
        for path, target in self.links:
            fd = os.dup(root_fd)
            try:
                for part in path[:-1]:
                    sub = os.open(part, O_DIR, dir_fd=fd)
                    os.close(fd)
                    fd = sub
                try:
                    os.symlink(target, path[-1], dir_fd=fd)
                except FileExistsError:
                    raise ProtocolError(f"{'/'.join(path)!r} exists already") from None
            finally:
                os.close(fd)


def export_tar(cid: bytes, blocks: BlockGetter, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """A temporary tar file, which the caller removes: the content as one entry called `name`, or, with no
    name, a directory's entries (a lone file as itself). Symlinks are stored as symlinks."""
    import shutil
    import tarfile
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="export-"))
    try:
        export(cid, blocks, tmp / "root", limits)
        fd, tar_path = tempfile.mkstemp(prefix="export-", suffix=".tar")
        try:
            with open(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
                root = tmp / "root"
                if name is not None:
                    tar.add(root, arcname=name)
                else:
                    for entry in sorted(root.iterdir()) if root.is_dir() and not root.is_symlink() else [root]:
                        tar.add(entry, arcname=entry.name)
        except BaseException:
            os.unlink(tar_path)
            raise
        return Path(tar_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
