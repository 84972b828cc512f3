"""Amplify's image step: for each image, a thumbnail (at most 128x128) and a resized copy (half size, at most
1024 on its long side), as <file>.thumb.png and <file>.resized.<ext>. An image whose header claims more than
MAX_IMAGE_PIXELS is refused before a pixel is decoded (a decompression bomb), alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amplify_common import output_path, run_each

MAX_IMAGE_PIXELS = 64 * 1024 * 1024     # 64 Mpx: 256 MiB as RGBA, the most one step decodes
THUMB = (128, 128)
RESIZED_MAX = 1024


def handle(rel: str, path: Path, mime: str) -> dict[str, Any]:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS} "
                             "(a decompression bomb?)")
        im.draft("RGB", (max(1, width // 2), max(1, height // 2)))   # JPEG: decode at the scale needed
        frame = ImageOps.exif_transpose(im)
        frame.load()
    keep_alpha = frame.mode in ("RGBA", "LA", "P")
    frame = frame.convert("RGBA" if keep_alpha else "RGB")
    thumb = frame.copy()
    thumb.thumbnail(THUMB)
    thumb_path = output_path(rel, ".thumb.png")
    thumb.save(thumb_path, "PNG")
    scale = min(0.5, RESIZED_MAX / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = frame.resize(size, Image.Resampling.LANCZOS)
    fmt, ext = ("PNG", ".png") if keep_alpha else ("JPEG", ".jpg")
    resized_path = output_path(rel, ".resized" + ext)
    resized.save(resized_path, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return {"width": width, "height": height, "thumbnail": thumb_path.name, "thumbnail_size": list(thumb.size),
            "resized": resized_path.name, "resized_size": list(size)}


if __name__ == "__main__":
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS      # and Pillow's own check, at twice this, in open()
    raise SystemExit(run_each(handle, wants=lambda mime: mime.startswith("image/")))
