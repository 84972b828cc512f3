"""Amplify's content detection and per-file selection over real files added to a real blockstore: mime types
and facts per type (JSON as JSON, not text), and the directory select_files makes is the very one our
Kubo-identical importer makes from the filtered files on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from bacalhau.amplify.content import FileFacts, check_mime_pattern, describe_files, select_files
from bacalhau.errors import NotFoundError, SpecError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.node import Node
from tests.amplify_files import fixtures, make_png


class Store:
    """A ContentStore on a real blockstore: fetch_cid as a node without bitswap does it (held, or NotFound)."""

    def __init__(self, root: Path) -> None:
        self.blockstore = Blockstore(root)

    async def fetch_cid(self, cid: bytes) -> None:
        if not self.blockstore.has(cid):
            raise NotFoundError("not held")

    def add(self, path: Path, cid_version: int = 0) -> bytes:
        return cid_to_bytes(add_path(path, self.blockstore.put, cid_version)[-1][0])


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
    cid = store.add(fixtures(tmp_path / "in"))
    got = by_path(await describe_files(store, cid))
    assert got["records.json"].mime == "application/json"
    assert got["records.json"].facts == {"top": "list", "rows": 5, "columns": 2, "header": ["id", "score"]}
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
    name = "n" * 200
    for i in range(1300):
        (src / f"{name}{i:05d}.txt").write_text(f"{i}\n")
    make_png(src / "pic.png")
    cid = store.add(src)
    texts = await select_files(store, cid, "text/plain")
    only = tmp_path / "only"
    only.mkdir()
    for i in range(1300):
        shutil.copy(src / f"{name}{i:05d}.txt", only)
    assert texts == cid_to_bytes(add_path(only)[-1][0])
    pic = await select_files(store, cid, "image/png")
    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copy(src / "pic.png", solo)
    assert pic == cid_to_bytes(add_path(solo)[-1][0])


def test_a_bad_mime_pattern_is_one_line() -> None:
    assert check_mime_pattern("image/*") == "image/*"
    for bad in ("image", "*/png", "image/*/x", "Image/PNG", "", "image/ png"):
        with pytest.raises(SpecError, match="bad mime pattern"):
            check_mime_pattern(bad)


async def test_a_node_describes_content_added_to_it(single_node: Node, tmp_path: Path) -> None:
    """Through the node itself, as the API and the workflow engine hand it over (ContentStore)."""
    src = fixtures(tmp_path / "in")
    cid = cid_to_bytes(add_path(src, single_node.blockstore.put)[-1][0])
    got = by_path(await describe_files(single_node, cid))
    assert got["records.json"].mime == "application/json"
    chosen = await select_files(single_node, cid, "text/csv")
    assert chosen is not None
    assert [f.path for f in await describe_files(single_node, chosen)] == ["people.csv"]
    (tmp_path / "elsewhere.txt").write_text("held by no node\n")
    absent = cid_to_bytes(add_path(tmp_path / "elsewhere.txt")[-1][0])
    with trio.fail_after(30), pytest.raises(NotFoundError):
        await describe_files(single_node, absent)
