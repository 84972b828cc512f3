"""Real files for Amplify's tests, made at test time: a PNG (Pillow), a WAV (the wave module), an MP4 (ffmpeg,
which scripts/setup-amplify.sh installs), a CSV, JSON with and without an extension (one over libmagic's head),
a text, an empty file, and a PNG in a subdirectory."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import wave
from pathlib import Path


def make_png(path: Path, size: tuple[int, int] = (64, 48)) -> None:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path, "PNG")


def make_wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(frames)))


def make_mp4(path: Path, seconds: float = 1, size: str = "64x48") -> None:
    """ffmpeg's test pattern in H.264 (its index after the media, as a camera writes it): by the host's ffmpeg,
    or the amplify image's own."""
    args = ["-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-t", str(seconds),
            "-pix_fmt", "yuv420p"]
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run([ffmpeg, *args, str(path)], check=True, timeout=60)
        return
    subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{path.parent.resolve()}:/out",
                    "--entrypoint", "ffmpeg", "bacalhau/amplify:latest", *args, f"/out/{path.name}"],
                   check=True, timeout=60)


def fixtures(root: Path, *, video: bool = False) -> Path:
    root.mkdir()
    make_png(root / "red.png")
    make_wav(root / "tone.wav")
    (root / "people.csv").write_text("name,age,city\nann,31,Lisbon\nbob,42,Porto\ncid,27,Faro\n")
    (root / "records.json").write_text(json.dumps([{"id": i, "score": i * 1.5} for i in range(5)]))
    big = [{"id": i, "text": "x" * 40} for i in range(3000)]       # ~160 KB: more than libmagic's head
    (root / "noext").write_text(json.dumps(big))
    (root / "notes.txt").write_text("The sea is wide.\nThe boats are small.\nFish.\n")
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    make_png(root / "sub" / "blue.png", (10, 20))
    if video:
        make_mp4(root / "clip.mp4")
    return root


