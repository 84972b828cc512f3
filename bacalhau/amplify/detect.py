"""What one file is, from its first bytes: the mime type by libmagic (python-magic over Debian's libmagic1),
corrected where libmagic cannot know (JSON cut short by the head read, a CSV it calls text), and the facts a
workflow routes on: image dimensions (Pillow reads the header only), audio and video duration and codecs
(ffprobe over a bounded copy of the file's first and last bytes, under a timeout, opening media containers
only), rows and columns of tables, lines and words of text.

Every read is bounded: the caller hands over at most `wanted(mime, size)` bytes (and MEDIA_TAIL_BYTES of a
media file's end); a file that is more than that is described from what was read and the facts say so
(`counted_bytes`). A fact that cannot be had (a
decompression bomb, a table too wide, a clip ffprobe refuses) is an `error` in that file's facts; nothing here
raises for one bad file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any

import trio

HEAD_BYTES = 64 * 1024                 # what libmagic looks at
IMAGE_BYTES = 1024 * 1024              # an image header (a JPEG's EXIF comes before its frame header)
SCAN_BYTES = 4 * 1024 * 1024           # tables and text are counted over at most this
MEDIA_BYTES = 16 * 1024 * 1024         # the copy ffprobe reads: the file's first bytes,
MEDIA_TAIL_BYTES = 16 * 1024 * 1024    # and its last (an MP4 not made for streaming has its index at the end)
MAX_SPARSE = 1 << 40                   # a file claiming more is probed from its first bytes only
FFPROBE_TIMEOUT = 10.0
FFPROBE_MAX_OUTPUT = 256 * 1024
MAX_COLUMNS = 10_000
MAX_IMAGE_PIXELS = 1 << 28             # 268 Mpx: beyond it an image is reported, never decoded
MAX_JSON_DEPTH = 200

_TEXTUAL = ("text/plain", "application/octet-stream")
# ffprobe opens only the file it is given, with a demuxer of a media container: no playlist (hls, concat,
# dash) that would have it open other files or URLs named inside the file
FFPROBE_FORMATS = ("mov,mp4,m4a,3gp,matroska,webm,wav,w64,mp3,ogg,flac,aac,avi,mpegts,mpeg,flv,asf,aiff,amr,caf,"
                   "au,wv,ape,dv,ivf,m4v,h264,hevc,mjpeg,rm")
FFPROBE = ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-format_whitelist", FFPROBE_FORMATS,
           "-print_format", "json", "-show_format", "-show_streams"]


def looks_like_json(head: bytes) -> bool:
    return head.lstrip()[:1] in (b"{", b"[")


def sniff_mime(data: bytes, name: str, size: int) -> str:
    """`data` is the file's first bytes: HEAD_BYTES, or up to SCAN_BYTES where `looks_like_json` (so that a
    JSON file of up to SCAN_BYTES is parsed whole: libmagic, given only its head, calls it text/plain)."""
    import magic

    if size == 0:
        return "application/x-empty"
    try:
        mime = str(magic.from_buffer(data[:HEAD_BYTES], mime=True))
    except magic.MagicException:        # libmagic gave up on these bytes: a type no one routes on
        return "application/octet-stream"
    lower = name.lower()
    if (mime in _TEXTUAL or mime == "text/csv" or lower.endswith(".json")) and looks_like_json(data):
        if _parses_as_json(data) if size <= len(data) else lower.endswith(".json"):
            return "application/json"
    if mime == "text/plain" and lower.endswith(".csv"):
        return "text/csv"        # (a .tsv stays text/plain, as libmagic and the job image call it: no step is
                                 # for text/tab-separated-values, the text step takes it)
    return mime


def _parses_as_json(data: bytes) -> bool:
    try:
        _load_json(data)
    except (ValueError, RecursionError):
        return False
    return True


def _load_json(data: bytes) -> Any:
    depth = 0
    for ch in data:     # a nesting deeper than this would exhaust the parser's stack: refused first
        if ch in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH}")
        elif ch in b"]}":
            depth -= 1
    return json.loads(data)


def wanted(mime: str, size: int) -> int:
    """How many of the file's first bytes the facts of this type need."""
    if mime.startswith("image/"):
        n = IMAGE_BYTES
    elif mime.startswith(("video/", "audio/")):
        n = MEDIA_BYTES
    elif mime.startswith("text/") or mime in ("application/json", "application/x-ndjson"):
        n = SCAN_BYTES
    else:
        n = 0
    return min(n, size)


def facts_sync(mime: str, size: int, data: bytes) -> dict[str, Any]:
    """The facts of the types that need no subprocess (blocking: run in a thread)."""
    try:
        if mime.startswith("image/"):
            return _image(data)
        if mime in ("text/csv", "text/tab-separated-values"):
            return _table(data, size, "\t" if mime.endswith("values") else ",")
        if mime == "application/json":
            return _json(data, size)
        if mime == "application/x-ndjson":
            return _json_lines(data, size)
        if mime.startswith("text/"):
            return _text(data, size)
    except Exception as exc:   # a parser's own surprise on a crafted file: that file's facts say so
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {}


def _image(data: bytes) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    try:
        # only the header is read; the pixel count is checked before anything would be decoded
        with Image.open(io.BytesIO(data)) as im:
            pass
    except Image.DecompressionBombError as exc:
        return {"error": f"a decompression bomb: {exc}"[:300]}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return {"error": f"not a readable image: {exc}"[:300]}
    width, height = im.size
    facts: dict[str, Any] = {"width": width, "height": height, "format": im.format, "mode": im.mode}
    if width * height > MAX_IMAGE_PIXELS:
        facts["error"] = f"{width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}"
    return facts


def _table(data: bytes, size: int, delimiter: str) -> dict[str, Any]:
    complete = len(data) >= size
    first_line = data.split(b"\n", 1)[0]
    if b"\n" not in data[:HEAD_BYTES] and len(data) > HEAD_BYTES:
        return {"error": f"a header row longer than {HEAD_BYTES} bytes"}
    if first_line.count(delimiter.encode()) + 1 > MAX_COLUMNS:
        return {"error": f"{first_line.count(delimiter.encode()) + 1} columns, over the limit of {MAX_COLUMNS}"}
    text = data.decode("utf-8", "replace")
    if not complete:
        text = text[:text.rfind("\n") + 1]       # the last line may be cut
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, [])
    rows, widths = 0, set()
    for row in reader:
        if row:
            rows += 1
            widths.add(len(row))
    facts: dict[str, Any] = {"columns": len(header), "header": [h[:100] for h in header[:100]], "rows": rows}
    if widths - {len(header)}:
        facts["ragged"] = True
    if not complete:
        facts["counted_bytes"] = len(data)
    return facts


def _json(data: bytes, size: int) -> dict[str, Any]:
    if len(data) < size:
        return {"counted_bytes": 0, "parsed": False}
    value = _load_json(data)
    facts: dict[str, Any] = {"top": type(value).__name__}
    if isinstance(value, list):
        facts["rows"] = len(value)
        keys: dict[str, None] = {}
        for item in value[:1000]:
            if isinstance(item, dict):
                keys.update(dict.fromkeys(list(item)[:MAX_COLUMNS]))
                if len(keys) > MAX_COLUMNS:
                    break
        if keys:
            facts["columns"] = len(keys)
            facts["header"] = [str(k)[:100] for k in list(keys)[:100]]
    elif isinstance(value, dict):
        facts["keys"] = len(value)
    return facts


def _json_lines(data: bytes, size: int) -> dict[str, Any]:
    """JSON lines (libmagic's application/x-ndjson): one record a line, counted over what was read."""
    if len(data) < size:
        data = data[:data.rfind(b"\n") + 1]      # the last line may be cut
    rows = 0
    keys: dict[str, None] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        record = _load_json(line)
        rows += 1
        if isinstance(record, dict) and rows <= 1000 and len(keys) <= MAX_COLUMNS:
            keys.update(dict.fromkeys(list(record)[:MAX_COLUMNS]))
    facts: dict[str, Any] = {"rows": rows, "columns": len(keys), "header": [str(k)[:100] for k in list(keys)[:100]]}
    if len(data) < size:
        facts["counted_bytes"] = len(data)
    return facts


def _text(data: bytes, size: int) -> dict[str, Any]:
    text = data.decode("utf-8", "replace")
    facts: dict[str, Any] = {"lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
                             "words": len(text.split())}
    if len(data) < size:
        facts["counted_bytes"] = len(data)
    return facts


async def media_facts(data: bytes, size: int, tail: bytes = b"") -> dict[str, Any]:
    """ffprobe over a temporary copy of the file's first bytes (and its last, `tail`, at their own offset in a
    sparse file as long as the original: the bytes between are a hole, no disk), killed after FFPROBE_TIMEOUT."""
    fd, path = await trio.to_thread.run_sync(tempfile.mkstemp, "", "amplify-probe-")
    try:
        if size > MAX_SPARSE:
            tail = b""
        try:
            await trio.to_thread.run_sync(_write_close, fd, data, size if tail else 0, tail)
        except OSError as exc:
            return {"error": f"no room for the copy ffprobe reads: {exc.strerror or exc}"}
        cmd = [*FFPROBE, path]
        try:
            with trio.fail_after(FFPROBE_TIMEOUT):
                done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        except trio.TooSlowError:
            return {"error": f"ffprobe took over {FFPROBE_TIMEOUT:g} s"}
        except OSError as exc:
            return {"error": f"ffprobe could not run: {exc.strerror or exc}"}
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return {"error": f"ffprobe: {reason[-1] if reason else 'exit ' + str(done.returncode)}"[:300]}
        return _probe_facts(done.stdout[:FFPROBE_MAX_OUTPUT], len(data) + len(tail) < size,
                            len(data) + len(tail))
    finally:
        await trio.to_thread.run_sync(_unlink, path)


def _write_close(fd: int, data: bytes, size: int = 0, tail: bytes = b"") -> None:
    with open(fd, "wb") as f:
        f.write(data)
        if tail and size >= len(data) + len(tail):
            f.truncate(size)
            f.seek(size - len(tail))
            f.write(tail)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _probe_facts(out: bytes, partial: bool, counted: int) -> dict[str, Any]:
    try:
        probe = json.loads(out)
    except ValueError:
        return {"error": "ffprobe gave no readable answer"}
    fmt = probe.get("format") or {}
    facts: dict[str, Any] = {"container": fmt.get("format_name")}
    try:
        facts["duration"] = round(float(fmt["duration"]), 3)
    except (KeyError, TypeError, ValueError):
        pass
    streams = [s for s in probe.get("streams") or [] if isinstance(s, dict)][:16]
    facts["codecs"] = [str(s.get("codec_name")) for s in streams]
    for s in streams:
        if s.get("codec_type") == "video" and "width" not in facts:
            facts["width"], facts["height"] = s.get("width"), s.get("height")
        if s.get("codec_type") == "audio" and "sample_rate" not in facts:
            facts["sample_rate"], facts["channels"] = s.get("sample_rate"), s.get("channels")
    if partial:
        facts["counted_bytes"] = counted
    return facts
