"""Data URLs as Bacalhau's `Inline` storage carries them (`data:[type][;base64],DATA`), decoded with every size
bounded while the bytes are produced: the base64 text, what it decodes to, and what gunzip makes of it (a
gzip bomb stops at the cap, it is never inflated whole). The Go CLI sends a WASM module over 512 B as a
gzipped tar holding the one file; smaller ones plain."""

from __future__ import annotations

import base64
import binascii
import io
import tarfile
import zlib
from urllib.parse import unquote_to_bytes

from bacalhau.api.bacalhau_v1.envelope import BadRequest

GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip"})
WASM_MAGIC = b"\0asm"


def decode(url: str, what: str, cap: int) -> tuple[str, bytes]:
    """(media type, bytes) of data URL `url`; BadRequest naming `what` if malformed or over `cap` bytes."""
    if not url[:5].lower() == "data:":
        raise BadRequest(f"{what}: the URL must be a data: URL, not {url[:40]!r}")
    head, sep, data = url[5:].partition(",")
    if not sep:
        raise BadRequest(f"{what}: a data URL needs a ',' before its data")
    params = [p.strip() for p in head.split(";")]
    is_b64 = bool(params) and params[-1].lower() == "base64"
    media = (params[0] if params and params[0] and "=" not in params[0] else "text/plain").lower()
    if len(data) > (cap * 4 // 3 + 4 if is_b64 else cap * 3):
        raise BadRequest(f"{what}: the data URL holds more than {cap} bytes")
    try:
        raw = base64.b64decode(data, validate=True) if is_b64 else unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what}: the data URL's base64 is malformed") from None
    if len(raw) > cap:
        raise BadRequest(f"{what}: the data URL holds more than {cap} bytes")
    return media, raw


def gunzip(data: bytes, what: str, cap: int) -> bytes:
    """`data` inflated, refused as soon as the output passes `cap` bytes (a bomb costs at most `cap`)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise BadRequest(f"{what}: not valid gzip data ({exc})") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise BadRequest(f"{what}: it inflates to more than {cap} bytes")
    return out


def single_file_of_tar(data: bytes, what: str, cap: int) -> bytes:
    """The one regular file in tar `data` (already bounded by `cap`)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            files = []
            for member in tar:
                if member.isfile():
                    files.append(member)
                if len(files) > 1:
                    break
            if len(files) != 1:
                raise BadRequest(f"{what}: the gzipped tar must hold exactly one file")
            if files[0].size > cap:
                raise BadRequest(f"{what}: its file is over {cap} bytes")
            f = tar.extractfile(files[0])
            assert f is not None
            return f.read(cap + 1)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadRequest(f"{what}: not a valid tar ({exc})") from None


def wasm_module(url: str, what: str, cap: int) -> bytes:
    """A WASM module from a data URL: plain, gzipped, or a gzipped tar of one file (as the Go CLI sends)."""
    media, raw = decode(url, what, cap)
    if media in GZIP_TYPES or raw[:2] == b"\x1f\x8b":
        raw = gunzip(raw, what, cap)
        if not raw.startswith(WASM_MAGIC):
            raw = single_file_of_tar(raw, what, cap)
    if not raw.startswith(WASM_MAGIC):
        raise BadRequest(f"{what}: not a WASM module (no \\0asm header)")
    return raw
