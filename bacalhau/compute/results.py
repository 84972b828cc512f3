"""Reading an execution's result off disk as a byte stream: one file, or the whole directory as a tar."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from bacalhau.errors import NotFoundError, ProtocolError
from bacalhau.ipfs.publish import RESULT_ENTRIES

CHUNK = 256 * 1024
ITEMS = ("stdout", "stderr", "exitCode", "tar")


def _make_tar(root: Path) -> Path:
    fd, tar_path = tempfile.mkstemp(prefix="result-", suffix=".tar")
    with open(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for entry in RESULT_ENTRIES:
            if (root / entry).exists():
                tar.add(root / entry, arcname=entry)
    return Path(tar_path)


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
