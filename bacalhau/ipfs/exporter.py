"""UnixFS export: files, plain and HAMT-sharded directories and symlinks back to disk, streaming, every
block verified against its CID by the blockstore."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from bacalhau.errors import ProtocolError
from bacalhau.ipfs.blockstore import codec_of
from bacalhau.ipfs.dagpb import PBLink, decode, decode_unixfs
from bacalhau.ipfs.unixfs import T_DIRECTORY, T_FILE, T_HAMT, T_RAW, T_SYMLINK


class BlockGetter(Protocol):
    def get(self, cid: bytes) -> bytes: ...


def cat(cid: bytes, blocks: BlockGetter) -> Iterator[bytes]:
    """A file's bytes, in order, a block at a time."""
    block = blocks.get(cid)
    if codec_of(cid) == 0x55:
        yield block
        return
    data, links = decode(block)
    fs = decode_unixfs(data)
    if fs.type not in (T_FILE, T_RAW):
        raise ProtocolError("not a file")
    if fs.data:
        yield fs.data
    for link in links:
        yield from cat(link.cid, blocks)


def _hamt_entries(links: list[PBLink], blocks: BlockGetter) -> Iterator[PBLink]:
    for link in links:
        if len(link.name) == 2:             # a sub-shard: just its index
            _, sub = decode(blocks.get(link.cid))
            yield from _hamt_entries(sub, blocks)
        else:
            yield PBLink(link.cid, link.name[2:], link.tsize)


def export(cid: bytes, blocks: BlockGetter, dest: Path) -> None:
    if codec_of(cid) == 0x55:
        _write_file(cid, blocks, dest)
        return
    data, links = decode(blocks.get(cid))
    fs = decode_unixfs(data)
    if fs.type in (T_FILE, T_RAW):
        _write_file(cid, blocks, dest)
    elif fs.type == T_SYMLINK:
        os.symlink(fs.data.decode(), dest)
    elif fs.type in (T_DIRECTORY, T_HAMT):
        dest.mkdir(parents=True, exist_ok=True)
        entries = _hamt_entries(links, blocks) if fs.type == T_HAMT else iter(links)
        for link in entries:
            if "/" in link.name or link.name in ("", ".", ".."):
                raise ProtocolError(f"unsafe entry name {link.name!r}")
            export(link.cid, blocks, dest / link.name)
    else:
        raise ProtocolError(f"unsupported UnixFS type {fs.type}")


def _write_file(cid: bytes, blocks: BlockGetter, dest: Path) -> None:
    with open(dest, "wb") as f:
        for chunk in cat(cid, blocks):
            f.write(chunk)


def export_tar(cid: bytes, blocks: BlockGetter, name: str | None = None) -> Path:
    """A temporary tar file, which the caller removes: the content as one entry called `name`, or, with no
    name, a directory's entries (a lone file as itself)."""
    import shutil
    import tarfile
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="export-"))
    try:
        export(cid, blocks, tmp / "root")
        fd, tar_path = tempfile.mkstemp(prefix="export-", suffix=".tar")
        with open(fd, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            root = tmp / "root"
            if name is not None:
                tar.add(root, arcname=name)
            else:
                for entry in sorted(root.iterdir()) if root.is_dir() and not root.is_symlink() else [root]:
                    tar.add(entry, arcname=entry.name)
        return Path(tar_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
