"""What every Amplify job script shares: its inputs (/inputs, a directory walked recursively or a single file;
symlinks never followed), where its outputs go (/outputs, mirroring each input's relative path), the mime type
of a file (libmagic, with JSON told from text), and one JSON line per file on stdout.

A job handles each file alone: one that fails is reported with its reason (on stdout, as that file's line, and
on stderr) and the others go on. The job exits 1 only when it was given files and none of them worked.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

INPUTS = Path(os.environ.get("AMPLIFY_INPUTS", "/inputs"))
OUTPUTS = Path(os.environ.get("AMPLIFY_OUTPUTS", "/outputs"))
HEAD_BYTES = 64 * 1024
JSON_SNIFF_BYTES = 4 * 1024 * 1024


def input_files(root: Path = INPUTS) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every regular file under root, sorted; root itself when it is a file."""
    if root.is_file() and not root.is_symlink():
        yield root.name, root
        return
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield str(path.relative_to(root)), path


def output_path(rel: str, suffix: str) -> Path:
    out = OUTPUTS / (rel + suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def mime_of(path: Path) -> str:
    import magic

    size = path.stat().st_size
    if size == 0:
        return "application/x-empty"
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if hasattr(magic, "from_buffer"):
        mime = str(magic.from_buffer(head, mime=True))
    else:                                   # the file-magic binding
        mime = str(magic.detect_from_content(head).mime_type)
    if mime in ("text/plain", "application/octet-stream", "text/csv") and head.lstrip()[:1] in (b"{", b"["):
        if size <= JSON_SNIFF_BYTES:
            try:
                json.loads(path.read_bytes())
                return "application/json"   # libmagic calls JSON that it cannot finish parsing text/plain
            except (ValueError, RecursionError):
                pass
        elif path.name.lower().endswith(".json"):
            return "application/json"
    if mime == "text/plain" and path.name.lower().endswith(".csv"):
        return "text/csv"
    return mime


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True, default=str), flush=True)


def run_each(handle: Callable[[str, Path, str], dict[str, Any] | None], *,
             wants: Callable[[str], bool] = lambda mime: True) -> int:
    """Calls handle(rel, path, mime) for every input file whose mime `wants` accepts; returns the exit code."""
    tried = worked = 0
    for rel, path in input_files():
        try:
            mime = mime_of(path)
        except OSError as exc:
            emit({"path": rel, "error": f"unreadable: {exc.strerror or exc}"})
            tried += 1
            continue
        if not wants(mime):
            continue
        tried += 1
        try:
            record = handle(rel, path, mime)
        except Exception as exc:   # one file's failure is its own: reported, and the next goes on
            reason = f"{type(exc).__name__}: {exc}"[:500]
            print(f"{rel}: {reason}", file=sys.stderr, flush=True)
            emit({"path": rel, "mime": mime, "error": reason})
            continue
        worked += 1
        emit({"path": rel, "mime": mime, **(record or {})})
    return 1 if tried and not worked else 0


FFPROBE_TIMEOUT = 30.0
# ffprobe and ffmpeg open only the file they are given, with a demuxer of a media container: no playlist (hls,
# concat, dash) that would have them open other files or URLs named inside it
MEDIA_FORMATS = ("mov,mp4,m4a,3gp,matroska,webm,wav,w64,mp3,ogg,flac,aac,avi,mpegts,mpeg,flv,asf,aiff,amr,caf,"
                 "au,wv,ape,dv,ivf,m4v,h264,hevc,mjpeg,rm")
SAFE_INPUT = ["-protocol_whitelist", "file", "-format_whitelist", MEDIA_FORMATS]


class ToolError(Exception):
    """ffprobe or ffmpeg refused a file, or took too long: the message says which and why."""


def run_tool(cmd: list[str], timeout: float) -> bytes:
    import subprocess

    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{cmd[0]} took over {timeout:g} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError(f"{cmd[0]}: {lines[-1] if lines else 'exit ' + str(done.returncode)}"[:500])
    return done.stdout


def ffprobe(path: Path) -> dict[str, Any]:
    out = run_tool(["ffprobe", "-v", "error", *SAFE_INPUT, "-print_format", "json", "-show_format",
                    "-show_streams", str(path)], FFPROBE_TIMEOUT)
    try:
        probe = json.loads(out)
    except ValueError:
        raise ToolError("ffprobe gave no readable answer") from None
    return probe if isinstance(probe, dict) else {}


def media_summary(probe: dict[str, Any]) -> dict[str, Any]:
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
    return facts
