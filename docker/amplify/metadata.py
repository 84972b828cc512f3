"""Amplify's metadata step, over every file: mime type, size, sha256, and the facts of its kind (image size,
media duration and codecs, table rows and columns, text lines and words). One JSON line per file on stdout
(what a child's predicate tests), the same as <file>.metadata.json under /outputs, and all of them in
/outputs/metadata.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from amplify_common import OUTPUTS, emit, ffprobe, input_files, media_summary, mime_of, output_path

MAX_IMAGE_PIXELS = 1 << 28
SCAN_BYTES = 64 * 1024 * 1024      # lines and words are counted over at most this much of a text


def facts_of(path: Path, mime: str) -> dict[str, Any]:
    if mime.startswith("image/"):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS     # over twice this, open() refuses: a decompression bomb
        with Image.open(path) as im:
            return {"width": im.size[0], "height": im.size[1], "format": im.format, "mode": im.mode}
    if mime.startswith(("audio/", "video/")):
        return media_summary(ffprobe(path))
    if mime.startswith("text/") or mime == "application/json":
        lines = words = 0
        counted = 0
        with open(path, "rb") as f:
            for line in iter(lambda: f.readline(1024 * 1024), b""):
                lines += line.endswith(b"\n") or 0
                words += len(line.split())
                counted += len(line)
                if counted >= SCAN_BYTES:
                    break
        facts: dict[str, Any] = {"lines": lines, "words": words}
        if counted < path.stat().st_size:
            facts["counted_bytes"] = counted
        return facts
    return {}


def main() -> int:
    everything = []
    tried = worked = 0
    for rel, path in input_files():
        tried += 1
        record: dict[str, Any] = {"path": rel}
        try:
            size = path.stat().st_size
            record.update({"size": size, "Content-Type": mime_of(path)})
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            record["sha256"] = digest.hexdigest()
            worked += 1
            record.update(facts_of(path, record["Content-Type"]))
        except Exception as exc:   # the facts of one file failed: its line says why, the others go on
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        try:
            output_path(rel, ".metadata.json").write_text(json.dumps(record, indent=1, sort_keys=True,
                                                                     default=str))
        except OSError as exc:      # e.g. a name with the suffix over 255 bytes: in metadata.json all the same
            record["output_error"] = f"{rel}.metadata.json not written: {exc.strerror or exc}"
        everything.append(record)
        emit(record)
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    (OUTPUTS / "metadata.json").write_text(json.dumps(everything, indent=1, sort_keys=True, default=str))
    return 1 if tried and not worked else 0


if __name__ == "__main__":
    raise SystemExit(main())
