"""Amplify's content detection and its jobs against hostile content: an image whose header claims 100000x100000
pixels (a decompression bomb), a CSV a million columns wide, a video ffprobe chokes on, ffprobe past its
time, a file that would have ffprobe open another file, and crafted DAGs (a diamond of directories, unsafe
names, a file claiming gigabytes, a block missing). Each is bounded and fails alone: the other files are
described or processed, and nothing more is read than detection needs."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import trio

from bacalhau.amplify import detect
from bacalhau.amplify.content import describe_files, select_files
from bacalhau.errors import ProtocolError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import T_DIRECTORY, T_FILE, Link, dag_pb, make_cid, unixfs_data
from tests.amplify_files import make_mp4, make_png, make_wav
from tests.test_amplify_content import Store, by_path
from tests.test_amplify_jobs import run_job


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header and a few bytes of pixel data: small on disk, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def broken_mp4(good: Path) -> bytes:
    """The first box of a real MP4 (libmagic: video/mp4), then noise: no moov, nothing ffprobe can read."""
    head = good.read_bytes()[:32]
    return head + bytes((i * 73 + 11) % 251 for i in range(200_000))


def hostile_inputs(root: Path) -> Path:
    root.mkdir()
    (root / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    make_png(root / "fine.png")
    (root / "wide.csv").write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + "1," * 999_999 + "1\n")
    (root / "narrow.csv").write_text("a,b\n1,2\n")
    make_mp4(root / "good.mp4")
    (root / "broken.mp4").write_bytes(broken_mp4(root / "good.mp4"))
    make_wav(root / "tone.wav")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_inputs(tmp_path_factory.mktemp("hostile") / "in")


async def test_hostile_files_are_described_each_alone_and_bounded(hostile: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "blocks")
    cid = store.add(hostile)
    started = time.monotonic()
    got = by_path(await describe_files(store, cid))
    assert time.monotonic() - started < 60          # a bound, not a timing: unbounded work takes minutes
    assert "decompression bomb" in got["bomb.png"].facts["error"]
    assert got["bomb.png"].mime == "image/png" and got["fine.png"].facts["width"] == 64
    assert "error" in got["wide.csv"].facts and "columns" not in got["wide.csv"].facts
    assert got["narrow.csv"].facts["columns"] == 2
    assert got["broken.mp4"].mime == "video/mp4" and got["broken.mp4"].facts["error"].startswith("ffprobe")
    assert got["good.mp4"].facts["codecs"][0] == "h264" and got["tone.wav"].facts["duration"] > 0
    assert got["deep.json"].mime != "application/json"       # refused before the parser's stack gives out
    assert "error" not in got["deep.json"].facts


async def test_ffprobe_past_its_time_is_killed_and_the_file_reports_it(
        monkeypatch: pytest.MonkeyPatch, hostile: Path) -> None:
    monkeypatch.setattr(detect, "FFPROBE_TIMEOUT", 0.001)
    data = (hostile / "good.mp4").read_bytes()
    facts = await detect.media_facts(data, len(data))
    assert facts == {"error": "ffprobe took over 0.001 s"}


async def test_a_file_cannot_have_ffprobe_open_another_file(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """An ffconcat list names a file beside the probe's temporary copy: ffprobe would open it and report its
    streams (what is on the node, read by a stranger's content). Only media containers are probed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make_wav(tmp_path / "secret.wav")
    data = b"ffconcat version 1.0\nfile secret.wav\n"
    facts = await detect.media_facts(data, len(data))
    assert "error" in facts and "codecs" not in facts
    assert sorted(os.listdir(tmp_path)) == ["secret.wav"]      # the copy is gone


@pytest.mark.docker
def test_the_jobs_handle_hostile_files_each_alone(hostile: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("bomb.png", "fine.png"):
        shutil.copy(hostile / name, images)
    ran = run_job("bacalhau/amplify:latest", "image-job", images, tmp_path / "out-image")
    assert ran.code == 0, ran.stderr
    assert "DecompressionBombError" in ran.by_path()["bomb.png"]["error"]
    assert ran.files() == ["fine.png.resized.jpg", "fine.png.thumb.png"]

    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("wide.csv", "narrow.csv", "deep.json"):
        shutil.copy(hostile / name, tables)
    (tables / "deep.json").rename(tables / "deep-table.json")
    ran = run_job("bacalhau/amplify:latest", "table-job", tables, tmp_path / "out-table")
    assert ran.code == 0, ran.stderr
    got = ran.by_path()
    assert got["wide.csv"]["valid"] is False and "over the limit of 10000" in got["wide.csv"]["errors"][0]
    assert got["narrow.csv"]["valid"] is True
    assert "deep-table.json" not in got      # no parser takes it for JSON: no table, and no crash

    media = tmp_path / "media"
    media.mkdir()
    for name in ("broken.mp4", "good.mp4"):
        shutil.copy(hostile / name, media)
    ran = run_job("bacalhau/amplify:latest", "media-job", media, tmp_path / "out-media")
    assert ran.code == 0, ran.stderr
    assert ran.by_path()["broken.mp4"]["error"].startswith("ToolError: ffprobe")
    assert ran.files() == ["good.mp4.preview.mp4", "good.mp4.probe.json"]

    meta = run_job("bacalhau/amplify:latest", "metadata-job", hostile, tmp_path / "out-meta")
    assert meta.code == 0, meta.stderr
    lines = meta.by_path()
    assert "DecompressionBombError" in lines["bomb.png"]["error"] and lines["fine.png"]["width"] == 64
    assert len(json.loads((meta.out / "metadata.json").read_text())) == len(list(hostile.iterdir()))


class Counting(Blockstore):
    """The real blockstore, counting reads."""

    gets = 0

    def get(self, cid: bytes, *, verify: bool = True) -> bytes:
        self.gets += 1
        return super().get(cid, verify=verify)


class CraftedStore(Store):
    def __init__(self, root: Path) -> None:
        self.blockstore = Counting(root)

    def put(self, block: bytes) -> bytes:
        cid = make_cid(block, 0x70, 0)
        self.blockstore.put(cid, block)
        return cid

    def file(self, data: bytes) -> bytes:
        return self.put(dag_pb(unixfs_data(T_FILE, data, len(data)), []))

    def dir(self, *entries: tuple[str, bytes]) -> bytes:
        return self.put(dag_pb(unixfs_data(T_DIRECTORY), [Link(cid, name, 1) for name, cid in entries]))


async def test_a_diamond_of_directories_is_refused_by_its_visits(tmp_path: Path) -> None:
    store = CraftedStore(tmp_path / "blocks")
    cid = store.file(b"leaf\n")
    for _ in range(40):          # 2^40 paths to one file: 41 distinct blocks
        cid = store.dir(("a", cid), ("b", cid))
    with pytest.raises(ProtocolError, match="over 100000 files|block visits"):
        await describe_files(store, cid)
    with pytest.raises(ProtocolError):
        await select_files(store, cid, "text/*")
    assert store.blockstore.gets < 200          # each block decoded once


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "x\0y"])
async def test_an_unsafe_name_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    store = CraftedStore(tmp_path / "blocks")
    cid = store.dir(("ok.txt", store.file(b"ok\n")), (name, store.file(b"evil\n")))
    with pytest.raises(ProtocolError, match="unsafe entry name"):
        await select_files(store, cid, "text/plain")


async def test_a_file_claiming_gigabytes_is_read_only_as_far_as_detection_needs(tmp_path: Path) -> None:
    store = CraftedStore(tmp_path / "blocks")
    leaf = store.file(b"x" * 262144)
    claimed = 174 * 174 * 262144           # 7.9 GB: 174 links to one node of 174 links to one leaf
    middle = store.put(dag_pb(unixfs_data(T_FILE, None, 174 * 262144, (262144,) * 174),
                              [Link(leaf, "", 262158)] * 174))
    root = store.put(dag_pb(unixfs_data(T_FILE, None, claimed, (174 * 262144,) * 174),
                            [Link(middle, "", 174 * 262158)] * 174))
    top = store.dir(("big.txt", root), ("small.txt", store.file(b"small\n")))
    store.blockstore.gets = 0
    got = by_path(await describe_files(store, top))
    assert got["big.txt"].size == claimed and got["big.txt"].mime == "text/plain"
    assert got["big.txt"].facts["counted_bytes"] == detect.SCAN_BYTES
    assert store.blockstore.gets < 60       # the first 4 MiB: 16 leaves and the nodes above them


async def test_a_missing_block_fails_its_file_alone(tmp_path: Path) -> None:
    store = CraftedStore(tmp_path / "blocks")
    absent = make_cid(dag_pb(unixfs_data(T_FILE, b"never stored", 12), []), 0x70, 0)
    top = store.dir(("gone.txt", absent), ("here.txt", store.file(b"here\n")))
    got = by_path(await describe_files(store, top))
    assert got["here.txt"].mime == "text/plain"
    assert "not in this store" in got["gone.txt"].facts["error"]


@pytest.mark.docker
def test_a_symlink_in_the_inputs_is_not_followed_by_any_step(tmp_path: Path) -> None:
    """The node exports a DAG's symlinks as links: one pointing at a file of the image (or anywhere) is no
    input of any step, and merge copies no link's target."""
    src = tmp_path / "in"
    (src / "step").mkdir(parents=True)
    (src / "passwd.txt").symlink_to("/etc/passwd")
    (src / "step" / "shadow").symlink_to("/etc/shadow")
    (src / "real.txt").write_text("real words here\n")
    meta = run_job("bacalhau/amplify:latest", "metadata-job", src, tmp_path / "out-meta")
    assert meta.code == 0, meta.stderr
    assert sorted(meta.by_path()) == ["real.txt"]
    text = run_job("bacalhau/amplify:latest", "text-job", src, tmp_path / "out-text")
    assert sorted(text.by_path()) == ["real.txt"]
    merged = run_job("bacalhau/amplify:latest", "merge-job", src, tmp_path / "out-merge")
    assert merged.code == 0 and merged.files() == ["index.json"]


async def test_a_cid_is_typed_once_for_all_its_selections(tmp_path: Path) -> None:
    """The default workflow selects from one CID six times: the files are read and typed the first time."""
    store = CraftedStore(tmp_path / "blocks")
    top = store.dir(("a.txt", store.file(b"words\n")), ("b.json", store.file(b'{"k": 1}')),
                    ("c.csv", store.file(b"x,y\n1,2\n")))
    got: dict[str, bytes | None] = {}

    async def select(pattern: str) -> None:
        got[pattern] = await select_files(store, top, pattern)

    async with trio.open_nursery() as nursery:       # at once, as the engine starts a parent's children
        for pattern in ("text/plain", "application/json", "text/csv", "image/*"):
            nursery.start_soon(select, pattern)
    first = store.blockstore.gets
    # one typing: the directory, each file's block listed, then read for its head (four would be 28)
    assert first == 7 and got["image/*"] is None and all(got[p] for p in ("text/plain", "text/csv"))
    for pattern in ("application/json", "text/csv", "image/*", "video/*", "audio/*"):
        await select_files(store, top, pattern)
    assert store.blockstore.gets == first


@pytest.mark.docker
def test_a_name_too_long_for_a_step_output_fails_that_file_alone(tmp_path: Path) -> None:
    """A 250-byte name is a fine input, but with a step's suffix (.thumb.png, .metadata.json) it is over the
    filesystem's 255: that file's output fails, the step and the other files do not."""
    src = tmp_path / "in"
    src.mkdir()
    long = "p" * 246 + ".png"
    make_png(src / long)
    make_png(src / "short.png")
    meta = run_job("bacalhau/amplify:latest", "metadata-job", src, tmp_path / "out-meta")
    assert meta.code == 0, meta.stderr
    assert "not written" in meta.by_path()[long]["output_error"] and meta.by_path()[long]["width"] == 64
    assert "short.png.metadata.json" in meta.files() and "metadata.json" in meta.files()
    images = run_job("bacalhau/amplify:latest", "image-job", src, tmp_path / "out-image")
    assert images.code == 0, images.stderr
    assert "File name too long" in images.by_path()[long]["error"]
    assert images.files() == ["short.png.resized.jpg", "short.png.thumb.png"]
