"""A rogue compute node's published result, read one entry at a time (api/results.py over content.py's
result_file): its stdout a directory, a symlink or missing, its root not a result. Each download fails alone
with one line (502 or 404 from the API, a line in `describe`), and the node goes on serving."""

from __future__ import annotations

import http.client
import json

import pytest
import trio

from bacalhau.ipfs.unixfs import T_DIRECTORY, T_FILE, T_SYMLINK, cid_str, unixfs_data
from bacalhau.models import Engine, Execution, ExecutionState, Job, JobSpec, JobState, RunResult
from bacalhau.node import Node
from tests.conftest import run_cli
from tests.hostile.test_crafted_dags import Dag


async def _rogue_job(node: Node, root: bytes) -> str:
    """A job a rogue node ran, as the requester records it once that node reports `root` published."""
    assert node.requester is not None
    store = node.requester.store
    job = Job(spec=JobSpec(engine=Engine.NOOP), state=JobState.COMPLETED)
    await store.create_job(job)
    ex = Execution(job_id=job.id, node_id="12D3KooWRogueNodeThatIsNotThere", state=ExecutionState.PUBLISHING)
    await store.create_execution(ex)
    await store.update_execution(ex.id, None, ExecutionState.COMPLETED, "published",
                                 result=RunResult(exit_code=0), result_ref=f"ipfs://{cid_str(root)}")
    return job.id


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_rogue_result_read_an_entry_at_a_time_fails_alone_with_one_line(single_node: Node) -> None:
    node = single_node
    dag = Dag()
    text = dag.node(unixfs_data(T_FILE, b"fine\n"), [])
    inner = dag.node(unixfs_data(T_DIRECTORY), [("a", text)])
    link = dag.node(unixfs_data(T_SYMLINK, b"/etc/passwd"), [])
    results = {
        "stdout a directory": dag.node(unixfs_data(T_DIRECTORY), [("stdout", inner)]),
        "stdout a symlink": dag.node(unixfs_data(T_DIRECTORY), [("stdout", link)]),
        "no stdout": dag.node(unixfs_data(T_DIRECTORY), [("stderr", text)]),
        "not a result": dag.node(unixfs_data(T_DIRECTORY), [("stdout", text), ("passwd", text)]),
    }
    node.blockstore.put_many(list(dag.blocks.items()))
    assert node.api_port is not None
    for attack, root in results.items():
        job_id = await _rogue_job(node, root)
        status, body = await trio.to_thread.run_sync(_get, node.api_port, f"/api/v1/jobs/{job_id}/results/stdout")
        answer = json.loads(body)
        # no node holds another copy and the rogue node is not there: a readable refusal, never a 500
        assert status in (404, 502), (attack, status, body)
        assert "\n" not in answer["error"] and answer["code"] in ("not_found", "upstream"), (attack, answer)
        described = await run_cli(node, "describe", job_id, "-o", "table")
        assert described.returncode == 0 and "Stdout:\n(not available: " in described.stdout, (attack, described)
        assert "Traceback" not in described.stderr
    # a well-formed result on the same node still reads
    good = dag.node(unixfs_data(T_DIRECTORY), [("stdout", text)])
    node.blockstore.put_many(list(dag.blocks.items()))
    job_id = await _rogue_job(node, good)
    assert await trio.to_thread.run_sync(_get, node.api_port, f"/api/v1/jobs/{job_id}/results/stdout") == \
        (200, b"fine\n")
