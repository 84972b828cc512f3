"""Inputs fetched over HTTP(S) by the compute node."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import trio

from bacalhau.errors import ExecutorError
from bacalhau.models import StorageSpec

DEFAULT_TIMEOUT = 60.0
MAX_BYTES = 10 * 1024**3


def _fetch(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DEFAULT_TIMEOUT) as resp, open(target, "wb") as out:
            length = resp.headers.get("Content-Length")
            if length and int(length) > MAX_BYTES:
                raise ExecutorError(f"input {url} is {length} bytes, over the {MAX_BYTES} limit")
            shutil.copyfileobj(resp, out, 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise ExecutorError(f"input {url} could not be fetched: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ExecutorError(f"input {url} could not be fetched: {reason}") from None


class UrlStorage:
    schemes = ("http", "https")

    async def prepare(self, spec: StorageSpec, dest: Path) -> None:
        name = PurePosixPath(unquote(urlparse(spec.source).path)).name or "download"
        await trio.to_thread.run_sync(_fetch, spec.source, dest / name, abandon_on_cancel=True)
