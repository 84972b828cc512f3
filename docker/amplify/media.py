"""Amplify's media step: for each video or audio file, what ffprobe says of it (<file>.probe.json) and a small
preview: the first PREVIEW_SECONDS of a video at 144 lines in H.264 (<file>.preview.mp4), of audio in AAC at
64 kb/s (<file>.preview.m4a). ffprobe and ffmpeg each run under a timeout; a file they choke on fails alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amplify_common import SAFE_INPUT, ToolError, ffprobe, media_summary, output_path, run_each, run_tool

PREVIEW_SECONDS = 5
FFMPEG_TIMEOUT = 120.0


def handle(rel: str, path: Path, mime: str) -> dict[str, Any]:
    probe = ffprobe(path)
    output_path(rel, ".probe.json").write_text(json.dumps(probe, indent=1, sort_keys=True))
    facts = media_summary(probe)
    kinds = {s.get("codec_type") for s in probe.get("streams") or [] if isinstance(s, dict)}
    if "video" in kinds and not mime.startswith("audio/"):
        out = output_path(rel, ".preview.mp4")
        codec = ["-vf", "scale=-2:144", "-c:v", "libx264", "-preset", "veryfast", "-crf", "30",
                 "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart"]
    elif "audio" in kinds:
        out = output_path(rel, ".preview.m4a")
        codec = ["-vn", "-c:a", "aac", "-b:a", "64k"]
    else:
        raise ToolError("ffprobe found neither a video nor an audio stream")
    run_tool(["ffmpeg", "-nostdin", "-v", "error", "-y", *SAFE_INPUT, "-i", str(path), "-t", str(PREVIEW_SECONDS),
              *codec, "-threads", "1", str(out)], FFMPEG_TIMEOUT)
    return {**facts, "preview": out.name, "preview_bytes": out.stat().st_size}


if __name__ == "__main__":
    raise SystemExit(run_each(handle, wants=lambda mime: mime.startswith(("video/", "audio/"))))
