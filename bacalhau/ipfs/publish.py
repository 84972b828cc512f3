"""Publishing an execution's result into the node's blockstore as one UnixFS directory:
stdout, stderr, exitCode and outputs/ (the same tree `bacalhau get` downloads), pinned.

What a job leaves in /outputs is hostile until proven otherwise. The walk is iterative (a tree 100,000
directories deep costs a list, not the stack), entries are classified by lstat and only three kinds are taken:
    regular files   opened with O_NOFOLLOW|O_NONBLOCK and taken only if fstat still says regular
    directories     walked, never followed through a symlink
    symlinks        published as symlinks (their target is data, never followed)
Everything else is skipped, never opened: FIFOs (opening one would block), character and block devices
(/dev/random never ends; a disk device is the host's disk), sockets. Names (and symlink targets) that are
not UTF-8 are skipped too: UnixFS link names are strings, and an escaped name would come back under another
name than the job wrote. Skipped entries are listed, one line each (the first SKIPPED_LISTED), in a note the
compute node appends to the execution's stderr before it reports the run, so the user sees them in the
job's stderr and in the published result.

A result's size is the sum of the apparent sizes of its regular files (stdout and stderr included). It is
checked against the node's limit (serve --max-result-size) before a byte is hashed, so a sparse terabyte is
refused at once, and again while hashing, in case a file grew.

A result known without running anything (a noop job's, executors/types.py KnownOutput) is published from
memory: a Tree of bytes (files) and dicts (directories), through the same importer, so its CID is the one the
same files would have on disk.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from bacalhau.errors import ExecutorError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import Importer, cid_str

if TYPE_CHECKING:
    from bacalhau.ipfs.unixfs import _Node

RESULT_ENTRIES = ("exitCode", "outputs", "stderr", "stdout")
SKIPPED_LISTED = 20
PUT_BATCH_BYTES = 4 * 1024 * 1024   # blocks of a result held before they are appended to the store
MAX_RESULT_ENTRIES = 1_000_000      # files, directories and symlinks of one result (each costs memory to publish)
Tree = dict[str, "bytes | Tree"]    # a result held in memory: a file's bytes, or a directory's entries
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


class ResultTooLarge(ExecutorError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the job's result is {size} bytes (apparent size), over this node's limit of {limit} "
                         f"bytes (serve --max-result-size); it was not published")


class TooManyEntries(ExecutorError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the job's outputs hold more than {limit} files, directories and symlinks; "
                         f"they were not published")


@dataclass(frozen=True)
class Entry:
    rel: str            # path under the result's root, '/'-separated
    path: Path
    kind: str           # "dir", "file" or "symlink"
    size: int = 0       # apparent size of a file


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (shown name, why)
    size: int = 0


def _shown(rel: str) -> str:
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk_result(root: Path, max_entries: int = MAX_RESULT_ENTRIES) -> Iterator[Entry | tuple[str, str]]:
    """The result's entries in pre-order (a directory before what it holds, children sorted by name), and
    (shown name, why) for each entry skipped. Nothing is followed and nothing but directories is opened.
    Raises TooManyEntries past `max_entries` (before a huge directory is listed whole)."""
    seen = 0
    stack: list[Iterator[tuple[str, Path]]] = [iter([(name, root / name) for name in RESULT_ENTRIES])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        rel, path = item
        seen += 1
        if seen > max_entries:
            raise TooManyEntries(max_entries)
        if not _utf8(rel):
            yield _shown(rel), "its name is not UTF-8"
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield Entry(rel, path, "dir")
            names = []
            with os.scandir(path) as listing:
                for child in listing:
                    names.append(child.name)
                    if seen + len(names) > max_entries:
                        raise TooManyEntries(max_entries)
            names.sort()
            stack.append(iter([(f"{rel}/{name}", path / name) for name in names]))
        elif stat.S_ISREG(mode):
            yield Entry(rel, path, "file", st.st_size)
        elif stat.S_ISLNK(mode):
            if not _utf8(os.readlink(path)):
                yield _shown(rel), "its target is not UTF-8"
            else:
                yield Entry(rel, path, "symlink")
        else:
            yield _shown(rel), _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def scan_result(root: Path) -> Scan:
    scan = Scan()
    for item in walk_result(root):
        if isinstance(item, Entry):
            scan.entries.append(item)
            scan.size += item.size
        else:
            scan.skipped.append(item)
    return scan


def skipped_note(skipped: list[tuple[str, str]]) -> str:
    lines = [f"bacalhau: not published: {name} ({why})" for name, why in skipped[:SKIPPED_LISTED]]
    if len(skipped) > SKIPPED_LISTED:
        lines.append(f"bacalhau: not published: {len(skipped) - SKIPPED_LISTED} more entries")
    return "\n" + "\n".join(lines) + "\n"


def open_regular(path: Path) -> BinaryIO | None:
    """`path` opened for reading if it is a regular file right now (never following a symlink, never
    blocking on a FIFO put in its place); None if it is not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None   # a symlink (ELOOP) or gone: not a regular file any more
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb")


class _Bounded:
    """A file's reader that fails once the whole result has read more than the limit."""

    def __init__(self, f: BinaryIO, budget: list[int], limit: int) -> None:
        self._f, self._budget, self._limit = f, budget, limit

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._budget[0] += len(data)
        if self._budget[0] > self._limit:
            raise ResultTooLarge(self._budget[0], self._limit)
        return data


class _Batched:
    """The importer's blocks, appended to the store a batch at a time: one append (one fdatasync) for a small
    result instead of one a block (a noop job's result is six blocks), bounded in memory for a big one."""

    def __init__(self, store: Blockstore, max_bytes: int = PUT_BATCH_BYTES) -> None:
        self._store, self._max = store, max_bytes
        self._blocks: list[tuple[bytes, bytes]] = []
        self._bytes = 0

    def put(self, cid: bytes, block: bytes) -> None:
        self._blocks.append((cid, block))
        self._bytes += len(block)
        if self._bytes >= self._max:
            self.flush()

    def flush(self) -> None:
        if self._blocks:
            self._store.put_many(self._blocks)
            self._blocks, self._bytes = [], 0


def _import(root: Path, put: Callable[[bytes, bytes], None], max_size: int | None) -> bytes:
    """The result's UnixFS blocks handed to `put`; its root CID (binary)."""
    scan = scan_result(root)
    limit = max_size if max_size is not None else 1 << 62
    if scan.size > limit:
        raise ResultTooLarge(scan.size, limit)
    importer = Importer(put)
    read = [0]
    # pre-order in, post-order out: a directory is added once everything under it is
    open_dirs: list[tuple[str, list[tuple[str, object]]]] = [("", [])]

    def close_dir() -> None:
        rel, children = open_dirs.pop()
        open_dirs[-1][1].append((rel.rsplit("/", 1)[-1], importer.add_dir(children)))  # type: ignore[arg-type]

    for entry in scan.entries:
        parent = entry.rel.rsplit("/", 1)[0] if "/" in entry.rel else ""
        while open_dirs[-1][0] != parent:
            close_dir()
        name = entry.rel.rsplit("/", 1)[-1]
        if entry.kind == "dir":
            open_dirs.append((entry.rel, []))
        elif entry.kind == "symlink":
            open_dirs[-1][1].append((name, importer.add_symlink(entry.path)))
        else:
            f = open_regular(entry.path)
            if f is None:
                continue
            with f:
                open_dirs[-1][1].append((name, importer.add_reader(_Bounded(f, read, limit))))
    while len(open_dirs) > 1:
        close_dir()
    return importer.add_dir(open_dirs[0][1]).cid  # type: ignore[arg-type]


def tree_size(tree: Tree) -> int:
    """The bytes of a Tree's files (what a result's size is on disk: the sum of its regular files')."""
    return sum(len(node) if isinstance(node, bytes) else tree_size(node) for node in tree.values())


def _import_tree(tree: Tree, put: Callable[[bytes, bytes], None], max_size: int | None) -> bytes:
    """A result held in memory, capped and imported as _import does a directory: the same blocks."""
    size = tree_size(tree)
    if max_size is not None and size > max_size:
        raise ResultTooLarge(size, max_size)
    importer = Importer(put)

    def add(node: bytes | Tree) -> _Node:
        if isinstance(node, bytes):
            return importer.add_reader(io.BytesIO(node))
        return importer.add_dir([(name, add(child)) for name, child in node.items()])

    return add(tree).cid


def publish_result(root: Path, store: Blockstore, max_size: int | None = None) -> str:
    batch = _Batched(store)
    cid = _import(root, batch.put, max_size)
    batch.flush()       # every block on disk before the pin that keeps them
    store.pin(cid)
    return cid_str(cid)


def publish_results(roots: Sequence[Callable[[], Path | Tree]], store: Blockstore,
                    max_size: int | None = None) -> list[str | Exception]:
    """Several results at once (compute/publishing.py groups those that wait): each is walked, capped and
    imported alone, so one that fails (too large, unreadable) fails alone, in its place in the list; the
    blocks of all are appended together and their roots pinned together: one fdatasync and one fsync for the
    group. `roots` are called here (finding a result's directory may touch the disk); one may give a Tree, a
    result held in memory, imported with no file read. Raises only if the
    appending or the pinning fails, which fails them all."""
    batch = _Batched(store)
    out: list[bytes | Exception] = []
    for root in roots:
        try:
            source = root()
            if isinstance(source, dict):
                out.append(_import_tree(source, batch.put, max_size))
            else:
                out.append(_import(source, batch.put, max_size))
        except Exception as exc:   # this result's failure, reported to its own caller
            out.append(exc)
    batch.flush()
    store.pin_many([cid for cid in out if isinstance(cid, bytes)])
    return [cid_str(cid) if isinstance(cid, bytes) else cid for cid in out]
