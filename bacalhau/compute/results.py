"""Reading an execution's result off disk as a byte stream: one file, or the whole directory as a tar; or,
for a result held in memory (a noop job's, executors/types.py KnownOutput; compute/held.py), the same from
memory."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from bacalhau.errors import NotFoundError, ProtocolError
from bacalhau.ipfs.publish import Entry, Tree, open_regular, walk_result

CHUNK = 256 * 1024
ITEMS = ("stdout", "stderr", "exitCode", "tar")


def _make_tar(root: Path) -> Path:
    """The result as a tar of what publishing takes (see ipfs/publish.py): regular files, directories and
    symlinks, walked without recursion; FIFOs, devices, sockets and names that are not UTF-8 are left out."""
    fd, tar_path = tempfile.mkstemp(prefix="result-", suffix=".tar")
    try:
        with open(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in walk_result(root):
                if not isinstance(entry, Entry):
                    continue
                if entry.kind != "file":
                    tar.addfile(tar.gettarinfo(entry.path, arcname=entry.rel))
                    continue
                f = open_regular(entry.path)
                if f is None:
                    continue
                with f:
                    tar.addfile(tar.gettarinfo(arcname=entry.rel, fileobj=f), f)
    except BaseException:
        Path(tar_path).unlink(missing_ok=True)
        raise
    return Path(tar_path)


def remove_tree(root: Path) -> None:
    """rm -rf without recursion (a job's outputs may nest deeper than Python 3.11's shutil.rmtree can go);
    never follows a symlink; what cannot be removed is left."""
    stack = [(root, False)]
    while stack:
        path, emptied = stack.pop()
        try:
            if emptied:
                path.rmdir()
            elif stat.S_ISDIR(os.lstat(path).st_mode):
                stack.append((path, True))     # removed once what it holds is
                stack.extend((path / name, False) for name in os.listdir(path))
            else:
                path.unlink()
        except OSError:
            continue


async def read_result(root: Path, item: str) -> AsyncIterator[bytes]:
    if item not in ITEMS:
        raise ProtocolError(f"unknown result item {item!r} (one of {', '.join(ITEMS)})")
    if item == "tar":
        path = await trio.to_thread.run_sync(_make_tar, root)
        temporary = True
    else:
        path = root / item
        temporary = False
        if not path.exists():
            raise NotFoundError(f"{item} of this execution is not on this node")
    async for chunk in stream_file(path, remove=temporary):
        yield chunk


def _tree_tar(tree: Tree) -> bytes:
    """A result held in memory as a tar of the entries _make_tar takes of the same files, in the same order."""
    out = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        stack: list[tuple[str, bytes | Tree]] = sorted(tree.items(), reverse=True)
        while stack:
            name, node = stack.pop()
            info = tarfile.TarInfo(name)
            info.mtime = now
            if isinstance(node, bytes):
                info.size, info.mode = len(node), 0o644
                tar.addfile(info, io.BytesIO(node))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                stack.extend(sorted(((f"{name}/{child}", sub) for child, sub in node.items()), reverse=True))
    return out.getvalue()


async def read_tree(tree: Tree, item: str) -> AsyncIterator[bytes]:
    """Item `item` of a result held in memory, as read_result gives it from disk."""
    if item not in ITEMS:
        raise ProtocolError(f"unknown result item {item!r} (one of {', '.join(ITEMS)})")
    if item == "tar":
        data = await trio.to_thread.run_sync(_tree_tar, tree)   # up to 4 MiB copied twice: not on the loop
    else:
        node = tree.get(item)
        if not isinstance(node, bytes):
            raise NotFoundError(f"{item} of this execution is not on this node")
        data = node
    for start in range(0, len(data), CHUNK):
        yield data[start:start + CHUNK]
        await trio.lowlevel.checkpoint()


async def stream_file(path: Path, *, remove: bool = False) -> AsyncIterator[bytes]:
    """A file's bytes in chunks; with `remove`, the file (a temporary one) is deleted afterwards."""
    try:
        async with await trio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                yield chunk
    finally:
        if remove:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
