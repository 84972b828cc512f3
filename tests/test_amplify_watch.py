"""`bacalhau amplify watch DIR`, the real command against a real node's API: a new file is added and queued once
it stops growing, each file once (remembered across restarts of the watcher), and Ctrl-C ends it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bacalhau.node import Node
from tests.conftest import node_config, run_cli
from tests.test_amplify import IMAGE, cat_file, wait_run, wf

LIST = wf(f"""
- id: list
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs > /outputs/list.txt']
""", """
- id: step
  job_id: list
  inputs: [{node_id: root-node, path: /inputs}]
""")


async def runs(node: Node) -> list[str]:
    found, _ = await node.amplify.store.list_runs(100, 0)
    return [r.id for r in found]


@pytest.mark.docker
async def test_watch_queues_a_new_file_once_it_stops_growing_once_across_restarts_and_stops_on_ctrl_c(
        single_node: Node, tmp_path: Path) -> None:
    node = single_node
    watched = tmp_path / "in"
    watched.mkdir()
    (tmp_path / "wf.yaml").write_text(LIST)
    env = {**os.environ, "BACALHAU_DIR": str(tmp_path / "client"), "BACALHAU_API_HOST": "127.0.0.1",
           "BACALHAU_API_PORT": str(node.api_port)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bacalhau.cli.main", "amplify", "watch", str(watched), "-f", str(tmp_path / "wf.yaml"),
         "--interval", "0.1", "--settle", "1.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        growing = watched / "notes.txt"
        with growing.open("w") as f:
            f.write("first half\n")
            f.flush()
            await trio.sleep(0.5)         # still growing: not taken yet (it settles only 1.5 s after its last write)
            f.write("second half\n")
        (watched / ".partial").write_text("hidden: never taken")
        with trio.fail_after(30):
            while not await runs(node):
                await trio.sleep(0.1)
        [run_id] = await runs(node)
        data = await wait_run(node, run_id)
        assert data["meta"]["status"] == "succeeded", data["meta"]
        cid = data["attributes"]["inputs"][0]["cid"]
        assert cat_file(node, cid, "notes.txt") == "first half\nsecond half\n"    # the whole file, not half
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            await proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    out = (await proc.stdout.receive_some()).decode()
    err = (await proc.stderr.receive_some()).decode()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped watching" in err, err
    assert out.split()[:2] == [run_id, "notes.txt"]

    # started again: notes.txt was taken before; only the new file is queued
    (watched / "more.txt").write_text("more")
    again = await run_cli(node, "amplify", "watch", str(watched), "-f", str(tmp_path / "wf.yaml"), "--once",
                          "--interval", "0.1", "--settle", "0.2", env={"BACALHAU_DIR": str(tmp_path / "client")})
    assert again.returncode == 0, again.stderr
    assert "notes.txt" not in again.stdout and again.stdout.split()[1] == "more.txt"
    assert len(await runs(node)) == 2


async def test_watch_once_reports_a_file_the_node_refuses_in_one_line_and_exits_1(tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    (watched / "a.txt").write_text("a")
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node", amplify_max_waiting=0)).run)
        out = await run_cli(node, "amplify", "watch", str(watched), "--once", "--settle", "0", "--interval", "0.1",
                            env={"BACALHAU_DIR": str(tmp_path / "client")})
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "a.txt: the amplify queue is full" in out.stderr and out.stdout == ""
        nursery.cancel_scope.cancel()
