"""Amplify's content detection in the node: files per second through describe_files (libmagic, Pillow's header
read, ffprobe on audio and video, table and text counts) and select_files (a directory of the matching files
from the parent's links), over a directory of N copies of the test fixtures (a PNG, a WAV, a CSV, two JSON
files, a text, an empty file, a PNG in a subdirectory; with --video an MP4 each), in a real blockstore. Then,
with --jobs, the wall time of each default-workflow step run once in bacalhau/amplify:latest over the lot.

    .venv/bin/python benchmarks/amplify_detect.py [--copies 20] [--video] [--jobs]

Measured on the shared 2-core machine at load 10-11 (4 files described at once):

    --copies 20           describe_files 160 files in 5.9 s (27 files/s; 20 WAVs through ffprobe);
                          select_files image/* 0.36 s, then text/csv 0.00 s (the files' types kept)
    --copies 20 --video   describe_files 180 files in 11.2 s (16 files/s; 40 ffprobes), 23.2 s one file at a
                          time before; the steps in the image over the 180: metadata 9.8 s, image 1.4 s,
                          media (40 probes and previews) 15.9 s, table 1.7 s, text 1.1 s
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.amplify.content import describe_files, select_files
from tests.amplify_files import fixtures
from tests.test_amplify_content import Store
from tests.test_amplify_jobs import run_job

STEPS = ["metadata-job", "image-job", "media-job", "table-job", "text-job"]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--video", action="store_true")
    parser.add_argument("--jobs", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="amplify-bench-"))
    try:
        one = fixtures(tmp / "one", video=args.video)
        root = tmp / "in"
        root.mkdir()
        for i in range(args.copies):
            shutil.copytree(one, root / f"set{i:03d}")
            (root / f"set{i:03d}" / "notes.txt").write_text(f"copy {i}\n" * (i + 1))   # not all alike
        store = Store(tmp / "blocks")
        cid = store.add(root)
        started = time.perf_counter()
        files = await describe_files(store, cid)
        took = time.perf_counter() - started
        print(f"describe_files: {len(files)} files in {took:.2f} s, {len(files) / took:.0f} files/s")
        for pattern in ("image/*", "text/csv"):
            started = time.perf_counter()
            chosen = await select_files(store, cid, pattern)
            print(f"select_files {pattern}: {time.perf_counter() - started:.2f} s -> {chosen is not None}")
        if args.jobs:
            for step in STEPS:
                started = time.perf_counter()
                ran = await trio.to_thread.run_sync(
                    functools.partial(run_job, "bacalhau/amplify:latest", step, root, tmp / f"out-{step}", timeout=600))
                print(f"{step}: exit {ran.code}, {len(ran.lines)} lines, {time.perf_counter() - started:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
