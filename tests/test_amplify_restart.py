"""Amplify's runs survive a `kill -9` of the requester that runs them: a node that finished is not run again,
the node whose job was in flight is re-attached to that job, and the run completes."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Served
from tests.test_faults import start_cluster

IMAGE = "bacalhau/busybox:latest"
WORKFLOW = f"""
jobs:
- id: root-job
  type: internal
- id: first
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs > /outputs/list.txt']
- id: slow
  image: {IMAGE}
  entrypoint: [sh, -c, 'sleep 6; cp /in/list.txt /outputs/copy.txt']
- id: last
  image: {IMAGE}
  entrypoint: [sh, -c, 'cat /in/copy.txt']
graph:
- id: root-node
  job_id: root-job
  inputs: [{{root: true}}]
- id: first-node
  job_id: first
  inputs: [{{node_id: root-node, path: /inputs}}]
- id: slow-node
  job_id: slow
  inputs: [{{node_id: first-node, path: /in}}]
- id: last-node
  job_id: last
  inputs: [{{node_id: slow-node, path: /in}}]
"""


def run_of(req: Served, run_id: str) -> dict[str, Any]:
    return req.client().request("GET", f"/api/v0/queue/{run_id}")["data"]  # type: ignore[no-any-return]


def nodes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n["attributes"] for n in data["attributes"]["graph"]}


@pytest.mark.docker
@pytest.mark.slow
def test_a_run_resumes_after_kill_9_without_running_a_finished_node_again(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    req, _computes, _client = start_cluster(served, 1)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("a.txt", "b.txt"):
        (data_dir / name).write_text(name)
    added = req.cli("ipfs", "add", "-q", "-r", str(data_dir))
    assert added.returncode == 0, added.stderr
    cid = added.stdout.strip().splitlines()[-1]
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(WORKFLOW)
    run_id = str(uuid.uuid4())
    out = req.cli("amplify", "run", cid, "-f", str(wf_file), "--id", run_id)
    assert out.returncode == 0, out.stderr

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        before = nodes(run_of(req, run_id))
        if before["slow-node"]["job_id"] and before["slow-node"]["state"] == "running":
            break
        time.sleep(0.1)
    assert before["first-node"]["state"] == "succeeded", before
    in_flight = before["slow-node"]["job_id"]
    assert in_flight
    req.stop(signal.SIGKILL)
    req.start()
    req.wait_ready()

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        data = run_of(req, run_id)
        if data["meta"]["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    after = nodes(data)
    assert data["meta"]["status"] == "succeeded", (data["meta"], after)
    assert after["first-node"]["jobs"] == before["first-node"]["jobs"]      # finished: never submitted again
    assert after["slow-node"]["jobs"] == [in_flight]                        # re-attached to its job
    assert len(after["last-node"]["jobs"]) == 1
    logs = req.cli("logs", after["last-node"]["job_id"])
    assert logs.stdout == "a.txt\nb.txt\n", logs
