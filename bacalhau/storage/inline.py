"""Inputs uploaded with the job: `inline:NAME;base64,DATA`."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import trio

from bacalhau.errors import ExecutorError
from bacalhau.models import StorageSpec

PREFIX = "inline:"
MAX_NAME_BYTES = 255      # NAME_MAX of Linux filesystems


def encode_inline(name: str, data: bytes) -> str:
    return f"{PREFIX}{name};base64,{base64.b64encode(data).decode()}"


class InlineStorage:
    schemes = ("inline",)

    async def prepare(self, spec: StorageSpec, dest: Path) -> None:
        head, sep, b64 = spec.source[len(PREFIX):].partition(";base64,")
        name = Path(head).name
        if not sep or not name or name in (".", ".."):
            raise ExecutorError(f"malformed inline input (expected inline:NAME;base64,DATA): {spec.source[:40]!r}")
        check_name(name)
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ExecutorError(f"inline input {name!r} is not valid base64") from None
        await trio.to_thread.run_sync((dest / name).write_bytes, data)


def check_name(name: str) -> None:
    """A file name the node can create as it is: a user's mistake here is one clear line, not an OSError."""
    if "\0" in name:
        raise ExecutorError(f"inline input name {name[:40]!r} contains a NUL character")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ExecutorError(f"inline input name {name[:40]!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise ExecutorError(f"inline input name {name[:40]!r}... is {size} bytes long; names up to "
                            f"{MAX_NAME_BYTES} bytes are allowed")
