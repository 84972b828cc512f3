"""Amplify's content detection and per-file selection over real files added to a real blockstore: mime types
and facts per type (JSON as JSON, not text), and the directory select_files makes is the very one our
Kubo-identical importer makes from the filtered files on disk."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import trio

from bacalhau.amplify.content import FileFacts, check_mime_pattern, describe_files, select_files
from bacalhau.errors import NotFoundError, SpecError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.dagpb import decode, decode_unixfs
from bacalhau.ipfs.unixfs import T_DIRECTORY, T_HAMT, add_path, cid_to_bytes
from bacalhau.node import Node
from tests.amplify_files import fixtures, make_mp4, make_png


class Store:
    """A ContentStore on a real blockstore: fetch_cid as a node without bitswap does it (held, or NotFound)."""

    def __init__(self, root: Path) -> None:
        self.blockstore = Blockstore(root)

    async def fetch_cid(self, cid: bytes) -> None:
        if not self.blockstore.has(cid):
            raise NotFoundError("not held")

    def add(self, path: Path, cid_version: int = 0) -> bytes:
        blocks: list[tuple[bytes, bytes]] = []
        root = add_path(path, lambda cid, block: blocks.append((cid, block)), cid_version)[-1][0]
        self.blockstore.put_many(blocks)
        return cid_to_bytes(root)

    def kind(self, cid: bytes) -> int:
        return decode_unixfs(decode(self.blockstore.get(cid))[0]).type


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "blocks")


def by_path(facts: list[FileFacts]) -> dict[str, FileFacts]:
    return {f.path: f for f in facts}


async def test_each_file_is_described_by_type_with_its_facts(store: Store, tmp_path: Path) -> None:
    cid = store.add(fixtures(tmp_path / "in", video=True))
    got = by_path(await describe_files(store, cid))
    assert sorted(got) == ["clip.mp4", "empty", "noext", "notes.txt", "people.csv", "records.json",
                           "red.png", "sub/blue.png", "tone.wav"]
    png = got["red.png"]
    assert png.mime == "image/png"
    assert (png.facts["width"], png.facts["height"]) == (64, 48)
    assert png.size == (tmp_path / "in" / "red.png").stat().st_size
    assert (got["sub/blue.png"].facts["width"], got["sub/blue.png"].facts["height"]) == (10, 20)
    wav = got["tone.wav"]
    assert wav.mime.startswith("audio/")
    assert wav.facts["duration"] == pytest.approx(0.5, abs=0.01)
    assert wav.facts["codecs"] == ["pcm_s16le"] and wav.facts["sample_rate"] == "8000"
    clip = got["clip.mp4"]
    assert clip.mime == "video/mp4"
    assert clip.facts["codecs"][0] == "h264" and (clip.facts["width"], clip.facts["height"]) == (64, 48)
    assert clip.facts["duration"] == pytest.approx(1.0, abs=0.15)
    csv = got["people.csv"]
    assert csv.mime == "text/csv"
    assert csv.facts["columns"] == 3 and csv.facts["rows"] == 3 and csv.facts["header"] == ["name", "age", "city"]
    text = got["notes.txt"]
    assert text.mime == "text/plain" and text.facts == {"lines": 3, "words": 9}
    assert got["empty"].mime == "application/x-empty" and got["empty"].size == 0


async def test_json_is_detected_as_json_not_text(store: Store, tmp_path: Path) -> None:
    """The original's bug #133: its detector called JSON text/plain. libmagic too, on a head cut mid-value."""
    src = fixtures(tmp_path / "in")
    (src / "events.ndjson").write_text("".join(json.dumps({"at": i, "kind": "tick"}) + "\n" for i in range(3)))
    cid = store.add(src)
    got = by_path(await describe_files(store, cid))
    assert got["records.json"].mime == "application/json"
    assert got["records.json"].facts == {"top": "list", "rows": 5, "columns": 2, "header": ["id", "score"]}
    lines = got["events.ndjson"]    # JSON lines: libmagic's own type, one record a line
    assert lines.mime == "application/x-ndjson"
    assert lines.facts == {"rows": 3, "columns": 2, "header": ["at", "kind"]}
    noext = got["noext"]            # no extension, and over libmagic's 64 KiB head
    assert noext.size > 64 * 1024
    assert noext.mime == "application/json" and noext.facts["rows"] == 3000


async def test_a_single_file_cid_is_described_and_selects_itself(store: Store, tmp_path: Path) -> None:
    make_png(tmp_path / "one.png")
    cid = store.add(tmp_path / "one.png")
    [facts] = await describe_files(store, cid)
    assert (facts.path, facts.mime, facts.facts["width"]) == ("", "image/png", 64)
    assert await select_files(store, cid, "image/*") == cid
    assert await select_files(store, cid, "text/*") is None


@pytest.mark.parametrize("cid_version", [0, 1])
async def test_selected_directory_is_the_one_kubo_makes_of_the_matching_files(
        store: Store, tmp_path: Path, cid_version: int) -> None:
    src = fixtures(tmp_path / "in")
    cid = store.add(src, cid_version)
    chosen = await select_files(store, cid, "image/*")
    assert chosen is not None and chosen != cid
    expect = tmp_path / "expect"
    expect.mkdir()
    shutil.copy(src / "red.png", expect / "red.png")
    (expect / "sub").mkdir()
    shutil.copy(src / "sub" / "blue.png", expect / "sub" / "blue.png")
    assert chosen == cid_to_bytes(add_path(expect, None, cid_version)[-1][0])
    # the new directory's blocks are stored: it lists, and its files are the parent's
    listed = by_path(await describe_files(store, chosen))
    assert sorted(listed) == ["red.png", "sub/blue.png"]
    assert await select_files(store, cid, "video/*") is None
    tables = await select_files(store, cid, "application/json")
    assert tables is not None
    assert sorted(by_path(await describe_files(store, tables))) == ["noext", "records.json"]


async def test_a_big_directory_selects_into_a_hamt_as_kubo_does(store: Store, tmp_path: Path) -> None:
    """Past the importer's threshold a directory is a HAMT shard, in the parent and in the selection."""
    src = tmp_path / "many"
    src.mkdir()
    name = "n" * 245           # 950 entries of 250-byte names and 34-byte CIDs pass the 262144 threshold
    for i in range(950):
        (src / f"{name}{i:05d}.txt").write_text(f"{i}\n")
    make_png(src / "pic.png")
    cid = store.add(src)
    texts = await select_files(store, cid, "text/plain")
    only = tmp_path / "only"
    only.mkdir()
    for i in range(950):
        shutil.copy(src / f"{name}{i:05d}.txt", only)
    assert texts == cid_to_bytes(add_path(only)[-1][0])
    assert store.kind(cid) == store.kind(texts) == T_HAMT
    pic = await select_files(store, cid, "image/png")
    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copy(src / "pic.png", solo)
    assert pic == cid_to_bytes(add_path(solo)[-1][0])
    assert pic is not None and store.kind(pic) == T_DIRECTORY


def test_a_bad_mime_pattern_is_one_line() -> None:
    assert check_mime_pattern("image/*") == "image/*"
    for bad in ("image", "*/png", "image/*/x", "Image/PNG", "", "image/ png"):
        with pytest.raises(SpecError, match="bad mime pattern"):
            check_mime_pattern(bad)


async def test_a_node_describes_content_added_to_it(single_node: Node, tmp_path: Path) -> None:
    """Through the node itself, as the API and the workflow engine hand it over (ContentStore)."""
    src = fixtures(tmp_path / "in")
    cid = cid_to_bytes(add_path(src, single_node.blockstore.put)[-1][0])
    got = by_path(await describe_files(single_node.content, cid))
    assert got["records.json"].mime == "application/json"
    chosen = await select_files(single_node.content, cid, "text/csv")
    assert chosen is not None
    assert [f.path for f in await describe_files(single_node.content, chosen)] == ["people.csv"]
    (tmp_path / "elsewhere.txt").write_text("held by no node\n")
    absent = cid_to_bytes(add_path(tmp_path / "elsewhere.txt")[-1][0])
    with trio.fail_after(30), pytest.raises(NotFoundError):
        await describe_files(single_node.content, absent)


async def test_the_selection_has_the_cid_real_kubo_gives_the_filtered_files(store: Store, tmp_path: Path) -> None:
    """The same comparison against Kubo 0.22 itself (`ipfs add -r -n` of the filtered directory)."""
    from bacalhau.testing.kubo import Kubo

    src = fixtures(tmp_path / "in")
    make_png(src / "sub" / "deeper.png", (300, 200))
    cid = store.add(src)
    chosen = await select_files(store, cid, "image/png")
    expect = tmp_path / "expect"
    (expect / "sub").mkdir(parents=True)
    for rel in ("red.png", "sub/blue.png", "sub/deeper.png"):
        shutil.copy(src / rel, expect / rel)
    with Kubo.start(tmp_path / "kubo") as kubo:
        kubo_cid = await trio.to_thread.run_sync(lambda: kubo.add(expect, only_hash=True))
    assert chosen == cid_to_bytes(kubo_cid)


@pytest.mark.parametrize("cid_version", [0, 1])
def test_a_range_of_a_file_is_read_from_the_blocks_it_lies_in(store: Store, tmp_path: Path,
                                                              cid_version: int) -> None:
    from bacalhau.amplify.tree import Tree

    data = random.Random(7).randbytes(3 * 262144 + 1000)
    (tmp_path / "f.bin").write_bytes(data)
    cid = store.add(tmp_path / "f.bin", cid_version)
    tree = Tree(store.blockstore)
    for offset, length in [(0, 10), (262140, 10), (262144, 262144), (3 * 262144, 1000), (len(data) - 5, 50),
                           (100, 3 * 262144)]:
        assert tree.read(cid, offset, length) == data[offset:offset + length], (offset, length)
    assert tree.head(cid, 70000) == data[:70000]


async def test_an_mp4_with_its_index_at_the_end_is_probed_past_the_first_bytes(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera's MP4 keeps its moov (durations, codecs) after the media: ffprobe given only the first bytes
    finds none. The copy it reads has the last bytes too, at their place (here the first 4 KiB and the
    last 8 KiB)."""
    from bacalhau.amplify import detect

    src = tmp_path / "in"
    src.mkdir()
    make_mp4(src / "camera.mp4", seconds=4, size="320x240")
    raw = (src / "camera.mp4").read_bytes()
    moov = raw.rfind(b"moov")
    assert moov > raw.find(b"mdat") > 0 and len(raw) > 12 * 1024 and len(raw) - moov < 8 * 1024
    monkeypatch.setattr(detect, "MEDIA_BYTES", 4 * 1024)
    monkeypatch.setattr(detect, "MEDIA_TAIL_BYTES", 8 * 1024)
    cid = store.add(src)
    [clip] = await describe_files(store, cid)
    assert clip.facts["duration"] == pytest.approx(4, abs=0.2), clip.facts
    assert (clip.facts["width"], clip.facts["height"]) == (320, 240)
    assert clip.facts["counted_bytes"] == 12 * 1024
