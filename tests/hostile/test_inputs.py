"""Inputs cannot reach what the node can: URL inputs to this machine or its networks, redirects, liars and
tricklers; ipfs:// inputs whose DAG repeats a child. Each test is the attack, against the real parts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bacalhau.testing.jsipfs import JsIpfs
from tests.conftest import Served

IMAGE = "bacalhau/busybox:latest"


@pytest.fixture
def jsipfs(tmp_path: Path) -> Iterator[JsIpfs]:
    with JsIpfs.start(tmp_path / "js-ipfs") as node:
        yield node




def test_two_identical_input_files_under_ipfs_connect_do_not_end_the_node(served, jsipfs: JsIpfs,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    node: Served = served("node", "--ipfs-connect", jsipfs.api_maddr).start()
    node.wait_ready()
    src = tmp_path / "twins"
    src.mkdir()
    (src / "a.txt").write_text("same\n")
    (src / "b.txt").write_text("same\n")       # one CID, linked twice by the directory
    added = node.cli("ipfs", "add", "-r", str(src))
    assert added.returncode == 0, added.stderr
    root = added.stdout.splitlines()[-1].split()[1]
    res = node.cli("docker", "run", "-i", f"ipfs://{root}:/in", IMAGE, "--", "sh", "-c", "cat /in/a.txt /in/b.txt")
    assert node.proc is not None and node.proc.poll() is None, node.log.read_text()[-3000:]
    assert res.returncode == 0, res.stderr
    assert res.stdout == "same\nsame\n"
    after = node.cli("docker", "run", IMAGE, "--", "echo", "still serving")
    assert after.returncode == 0 and after.stdout == "still serving\n", after.stderr
    jobs = json.loads(node.cli("list", "-o", "json").stdout)
    assert len(jobs) == 2
