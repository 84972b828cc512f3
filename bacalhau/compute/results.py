"""Reading an execution's result off disk as a byte stream: one file, or the whole directory as a tar."""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from bacalhau.errors import NotFoundError, ProtocolError
from bacalhau.ipfs.publish import Entry, open_regular, walk_result

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
