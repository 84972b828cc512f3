"""Amplify's memoisation: the same step (same spec) over the same input CIDs is served from its recorded result,
no job submitted; a changed spec or input runs, and so does any step of a run with no_cache. The memo is in
amplify.db (layout 1): a file of layout 0 opens, migrated in place."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from bacalhau.amplify.store import SCHEMA, AmplifyStore, Memo, RunState
from bacalhau.node import Node
from tests.conftest import run_cli
from tests.test_amplify import IMAGE, add_dir, nodes_of, submit, wait_run, wf


def one_step(text: str) -> str:
    return wf(f"""
- id: echo
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs > /outputs/list.txt; echo {text}']
""", """
- id: step
  job_id: echo
  inputs: [{node_id: root-node, path: /inputs}]
""")


async def job_count(node: Node) -> int:
    return len(await node.requester.store.list_jobs(1000))


async def run_once(node: Node, cid: str, workflow: str, no_cache: bool = False) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    answer = await submit(node, cid, workflow, run_id, no_cache=no_cache)
    assert answer.status_code == 202, answer.text
    data = await wait_run(node, run_id)
    assert data["meta"]["status"] == "succeeded", data["meta"]
    return nodes_of(data)["step"]


@pytest.mark.docker
@pytest.mark.slow
async def test_a_second_run_of_the_same_step_and_cid_is_served_from_the_cache_a_changed_one_is_not(
        single_node: Node, tmp_path: Path) -> None:
    node = single_node
    cid = add_dir(node, tmp_path / "a", {"a.txt": "a"})
    first = await run_once(node, cid, one_step("one"))
    assert not first["cached"] and len(first["jobs"]) == 1
    jobs = await job_count(node)

    again = await run_once(node, cid, one_step("one"))
    assert again["cached"] and again["jobs"] == [] and await job_count(node) == jobs     # no job submitted
    assert again["output_cid"] == first["output_cid"] and "from the cache" in again["reason"]

    changed_spec = await run_once(node, cid, one_step("two"))
    assert not changed_spec["cached"] and await job_count(node) == jobs + 1
    other = add_dir(node, tmp_path / "b", {"b.txt": "b"})
    changed_input = await run_once(node, other, one_step("one"))
    assert not changed_input["cached"] and await job_count(node) == jobs + 2
    forced = await run_once(node, cid, one_step("one"), no_cache=True)
    assert not forced["cached"] and await job_count(node) == jobs + 3

    # the CLI's --no-cache, signed as the API checks it; describe shows a cached node
    (tmp_path / "wf.yaml").write_text(one_step("one"))
    out = await run_cli(node, "amplify", "run", cid, "--no-cache", "--wait", "--timeout", "60",
                        "-f", str(tmp_path / "wf.yaml"))
    assert out.returncode == 0, out.stderr
    assert await job_count(node) == jobs + 4 and "(cached)" not in out.stdout
    out = await run_cli(node, "amplify", "run", cid, "--wait", "--timeout", "60", "-f", str(tmp_path / "wf.yaml"))
    assert out.returncode == 0, out.stderr
    assert await job_count(node) == jobs + 4 and "succeeded (cached)" in out.stdout


async def test_an_amplify_db_of_the_layout_before_the_memo_opens_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "amplify.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)        # layout 0, as the previous version wrote it
    conn.execute("INSERT INTO runs(id, cid, workflow, state, created_at) VALUES ('r1', 'Qm', 'jobs: []', 'queued', 1)")
    conn.execute("INSERT INTO nodes(run_id, node_id, state) VALUES ('r1', 'n', 'succeeded')")
    conn.commit()
    conn.close()
    store = AmplifyStore(path)
    try:
        run = await store.get_run("r1")
        assert run.state == RunState.QUEUED and not run.no_cache and not run.nodes["n"].cached
        assert await store.recall("h") is None
        await store.remember("h", Memo("bafyout", "printed", "job-1", IMAGE, "node-1"))
        assert await store.recall("h") == Memo("bafyout", "printed", "job-1", IMAGE, "node-1")
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 1
