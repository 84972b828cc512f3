"""Content detection and per-file routing over a CID, for Amplify's workflows.

    describe_files(content, cid)              -> [FileFacts]: per file its path, mime type, size and facts
    select_files(content, cid, "image/*")     -> a new UnixFS directory of only the matching files, or None

`select_files` builds its directory from the parent's own links (CID and cumulative size), writing only the new
directory blocks: no file is read or copied beyond what detection needs, and the CID is the one Kubo's
`ipfs add -r` gives the same files in the same layout (the importer's directory code, HAMT past its threshold,
CIDv1 when the parent is). A CID that is a single file selects itself, or nothing. The mime types of a CID's
files are kept for the next selection from it (a workflow makes one per `when`; selections at once wait for
the first).

Detection reads each file's first bytes only, and an audio or video file's last (detect.py says how many per
type); the DAG is walked under the caps of tree.py. One file that cannot be read or described gets an `error` fact and the others go on; a DAG
that cannot be listed at all raises ProtocolError.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from bacalhau.amplify import detect
from bacalhau.amplify.tree import FileEntry, Tree
from bacalhau.errors import BacalhauError, SpecError
from bacalhau.ipfs.unixfs import Importer, _Node, cid_str

if TYPE_CHECKING:
    from bacalhau.api.ports import ContentStore

CONCURRENCY = 4                         # files described at once
_limiter = trio.CapacityLimiter(2)      # threads reading blocks and parsing, for all descriptions together
T = TypeVar("T")
# The mime type of each file of the last CIDs selected from: a workflow selects from one CID once per `when`
# (the default workflow six times), and a CID's files are what they are (content-addressed).
MAX_TYPED_CIDS = 64
MAX_TYPED_FILES = 10_000
_typed: dict[bytes, list[tuple[FileEntry, str]]] = {}
_typing: dict[bytes, trio.Event] = {}
_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
_PATTERN = re.compile(rf"^(\*/\*|{_TOKEN}/(\*|{_TOKEN}))$")


@dataclass(frozen=True)
class FileFacts:
    path: str                  # relative to the CID's root, '/'-separated; "" when the CID is a single file
    cid: str
    mime: str
    size: int
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "cid": self.cid, "mime": self.mime, "size": self.size, "facts": self.facts}


def check_mime_pattern(pattern: str) -> str:
    """'image/*', 'text/csv', '*/*' (lower case); SpecError with one line otherwise."""
    if not _PATTERN.match(pattern):
        raise SpecError(f"bad mime pattern {pattern!r}: write type/subtype, e.g. 'image/*' or 'text/csv'")
    return pattern


def mime_matches(pattern: str, mime: str) -> bool:
    want_type, want_sub = pattern.split("/", 1)
    have_type, _, have_sub = mime.lower().partition("/")
    return want_type in ("*", have_type) and want_sub in ("*", have_sub)


async def describe_files(content: ContentStore, cid: bytes) -> list[FileFacts]:
    tree, files = await _list(content, cid)
    return await _each(files, lambda entry: _describe(tree, entry))


async def select_files(content: ContentStore, cid: bytes, mime_pattern: str) -> bytes | None:
    pattern = check_mime_pattern(mime_pattern)
    typed = _typed.get(cid)
    while typed is None and cid in _typing:     # the workflow's other `when`s, at once: one types the files
        await _typing[cid].wait()
        typed = _typed.get(cid)
    if typed is None:
        _typing[cid] = done = trio.Event()
        try:
            typed = await _type_files(content, cid)
        finally:
            del _typing[cid]
            done.set()
    matched = [entry for entry, mime in typed if mime_matches(pattern, mime)]
    if not matched:
        return None
    if matched[0].path == "":
        return cid
    blocks: list[tuple[bytes, bytes]] = []
    importer = Importer(lambda c, b: blocks.append((c, b)), cid_version=1 if cid[0] == 1 else 0)
    root = _build(importer, matched)
    await trio.to_thread.run_sync(content.blockstore.put_many, blocks, limiter=_limiter)
    return root.cid


async def _type_files(content: ContentStore, cid: bytes) -> list[tuple[FileEntry, str]]:
    tree, files = await _list(content, cid)
    sniffed = await _each(files, lambda entry: _sniff(tree, entry))
    typed = [(entry, mime) for entry, (mime, data) in zip(files, sniffed, strict=True) if data is not None]
    if len(typed) == len(files) <= MAX_TYPED_FILES:     # a file unread (a block missing) may read later
        _typed[cid] = typed
        while len(_typed) > MAX_TYPED_CIDS:
            _typed.pop(next(iter(_typed)))
    return typed


async def _each(files: list[FileEntry], fn: Callable[[FileEntry], Awaitable[T]]) -> list[T]:
    """fn over the files, CONCURRENCY at a time (ffprobe and the thread hops overlap), results in order."""
    results: list[T | None] = [None] * len(files)
    todo = iter(enumerate(files))

    async def worker() -> None:
        for i, entry in todo:
            results[i] = await fn(entry)

    async with trio.open_nursery() as nursery:
        for _ in range(min(CONCURRENCY, len(files))):
            nursery.start_soon(worker)
    return results  # type: ignore[return-value]   # every slot was filled


async def _describe(tree: Tree, entry: FileEntry) -> FileFacts:
    mime, data = await _sniff(tree, entry)
    facts: dict[str, Any] = {}
    if data is None:
        facts = {"error": mime}
        mime = "application/octet-stream"
    else:
        try:
            need = detect.wanted(mime, entry.size)
            if len(data) < need:
                data = await trio.to_thread.run_sync(tree.head, entry.cid, need, limiter=_limiter)
            data = data[:need]
            if mime.startswith(("video/", "audio/")):
                tail = b""
                if entry.size > len(data):
                    length = min(detect.MEDIA_TAIL_BYTES, entry.size - len(data))
                    tail = await trio.to_thread.run_sync(tree.read, entry.cid, entry.size - length, length,
                                                         limiter=_limiter)
                facts = await detect.media_facts(data, entry.size, tail)
            else:
                facts = await trio.to_thread.run_sync(detect.facts_sync, mime, entry.size, data, limiter=_limiter)
        except BacalhauError as exc:         # a block of this file missing or malformed: this file only
            facts = {"error": str(exc)}
    return FileFacts(entry.path, cid_str(entry.cid), mime, entry.size, facts)


def _build(importer: Importer, files: list[FileEntry]) -> _Node:
    """The directory tree of these files, from their links; subdirectories made bottom up."""
    here: list[tuple[str, _Node]] = []
    subdirs: dict[str, list[FileEntry]] = {}
    for entry in files:
        name, sep, rest = entry.path.partition("/")
        if sep:
            subdirs.setdefault(name, []).append(FileEntry(rest, entry.cid, entry.tsize, entry.size))
        else:
            here.append((name, _Node(entry.cid, entry.tsize, entry.size)))
    for name, under in subdirs.items():
        here.append((name, _build(importer, under)))
    return importer.add_dir(here)


async def _list(content: ContentStore, cid: bytes) -> tuple[Tree, list[FileEntry]]:
    await content.fetch_cid(cid)
    tree = Tree(content.blockstore)
    files = await trio.to_thread.run_sync(tree.files, cid, limiter=_limiter)
    return tree, files


async def _sniff(tree: Tree, entry: FileEntry) -> tuple[str, bytes | None]:
    """(mime, the first bytes read) or (why not, None)."""
    if entry.error:
        return entry.error, None
    return await trio.to_thread.run_sync(_sniff_sync, tree, entry, limiter=_limiter)


def _sniff_sync(tree: Tree, entry: FileEntry) -> tuple[str, bytes | None]:
    name = entry.path.rsplit("/", 1)[-1]
    try:
        data = tree.head(entry.cid, min(entry.size, detect.HEAD_BYTES))
        if detect.looks_like_json(data) and entry.size > len(data):
            data = tree.head(entry.cid, min(entry.size, detect.SCAN_BYTES))
        return detect.sniff_mime(data, name, entry.size), data
    except BacalhauError as exc:
        return str(exc), None
