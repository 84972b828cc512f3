"""Unpacking what the node sent (`ipfs get`, `get`): tarfile's `data` filter, except that a symlink is written
as a link wherever it points (content from IPFS may hold one to /etc), as the node's export keeps it. Nothing
is written through one: the filter resolves every later member's path, links included, and refuses what lands
outside the destination."""

from __future__ import annotations

import tarfile
from pathlib import Path

from bacalhau.errors import UserError


def _keep_links(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    if member.issym():
        checked = tarfile.data_filter(member.replace(linkname=".", deep=False), dest)   # its own path
        return checked.replace(linkname=member.linkname, deep=False)
    return tarfile.data_filter(member, dest)


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    try:
        tar.extractall(dest, filter=_keep_links)
    except tarfile.FilterError as exc:
        raise UserError(f"refused to unpack what the node sent: {exc}") from None
    except tarfile.TarError as exc:
        raise UserError(f"what the node sent is not a readable tar: {exc}") from None
