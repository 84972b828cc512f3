"""The shipped default workflow end to end on one node, with real Docker jobs in the locally built image and
real content detection: the right steps run for the files given and only those, no job is submitted for a
skipped step, the merged CID holds what each step wrote, and lineage links the merged output to its inputs."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.node import Node
from tests.amplify_files import fixtures
from tests.test_amplify import api, cat_file, nodes_of, submit, wait_run


@pytest.mark.docker
@pytest.mark.slow
async def test_the_default_workflow_runs_the_steps_each_file_needs_and_merges_them(
        single_node: Node, tmp_path: Path) -> None:
    node = single_node
    root = fixtures(tmp_path / "in", video=shutil.which("ffmpeg") is not None)
    lines = add_path(root, put=node.blockstore.put)
    cid = lines[-1][0]
    node.blockstore.pin(cid_to_bytes(cid))
    run_id = str(uuid.uuid4())
    answer = await submit(node, cid, None, run_id)     # the node's default workflow
    assert answer.status_code == 202, answer.text
    data = await wait_run(node, run_id, timeout=300)
    nodes = nodes_of(data)
    states = {k: v["state"] for k, v in nodes.items()}
    video = (root / "clip.mp4").exists()
    expected = {"root-node": "succeeded", "metadata-node": "succeeded", "image-node": "succeeded",
                "audio-node": "succeeded", "csv-node": "succeeded", "json-node": "succeeded",
                "text-node": "succeeded", "merge-node": "succeeded",
                "video-node": "succeeded" if video else "skipped"}
    assert states == expected, {k: (v["state"], v["reason"]) for k, v in nodes.items()}
    assert data["meta"]["status"] == "succeeded"
    if not video:
        assert nodes["video-node"]["jobs"] == [] and "no file matches video/*" in nodes["video-node"]["reason"]
    merged = nodes["merge-node"]["output_cid"]
    assert data["attributes"]["outputs"] == [{"cid": merged}]
    index = json.loads(cat_file(node, merged, "index.json"))
    ran = {k.removesuffix("-node") for k, v in expected.items() if v == "succeeded"} - {"root", "merge"}
    assert set(index) == ran, index
    # lineage: the merged CID was made from each step's output, and each of those from the run's CID (or a
    # selection of its files, itself made from it)
    up = (await api(node, "GET", f"/api/v0/lineage/{merged}", direction="up", depth=3)).json()["data"]
    inputs = {e["input"] for e in up["up"]}
    assert {nodes[f"{name}-node"]["output_cid"] for name in ran} <= inputs
    assert cid in inputs
