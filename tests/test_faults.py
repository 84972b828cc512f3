"""Faults with real processes: a compute node killed with SIGKILL in the middle of a batch of jobs."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from bacalhau.cli.client import ApiClient
from tests.conftest import Served, join_args

# a plain job's execution, taken by its node: running there ("bid_accepted" where the ask was pre-approved, the
# requester hearing nothing more until it ends; "running" in the flow of an acceptance after the bid)
TAKEN = ("bid_accepted", "running")


def start_cluster(make, computes: int) -> tuple[Served, list[Served], ApiClient]:  # type: ignore[no-untyped-def]
    """A requester process and `computes` compute processes joined to it (labels name=c0, c1, ...)."""
    req = make("req", "--node-type", "requester").start()
    peer, key = join_args(req.wait_ready())
    nodes = [make(f"c{i}", "--node-type", "compute", "--peer", peer, "--swarm-key", key, "--labels",
                    f"name=c{i}").start() for i in range(computes)]
    for c in nodes:
        c.wait_ready()
    client = req.client()
    deadline = time.monotonic() + 30
    while len(client.nodes()) < computes and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(client.nodes()) == computes
    return req, nodes, client


@pytest.mark.docker
@pytest.mark.slow
def test_killing_a_compute_node_mid_batch_loses_no_job(served) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    req, computes, client = start_cluster(served, 3)

    ids = [client.submit({"engine": "docker", "docker": {"image": "bacalhau/busybox:latest",
                                                          "parameters": ["sh", "-c", f"sleep 2; echo job-{i}"]}})
           for i in range(30)]
    # wait until the victim runs something, then kill it without warning
    victim = computes[0]
    victim_id = next(n["node_id"] for n in client.nodes() if n["labels"].get("name") == "c0")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(e["node_id"] == victim_id and e["state"] in TAKEN
               for job_id in ids for e in client.job(job_id)["executions"]):
            break
        time.sleep(0.1)
    victim.stop(signal.SIGKILL)

    deadline = time.monotonic() + 90
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if client.job(job_id)["state"] in ("completed", "failed", "cancelled"):
                pending.discard(job_id)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} jobs did not end"
    jobs = [client.job(j) for j in ids]
    assert all(j["state"] == "completed" for j in jobs), [(j["id"][:8], j["state"], j["reason"]) for j in jobs]
    moved = [j for j in jobs if any(e["node_id"] == victim_id and e["state"] == "failed" for e in j["executions"])]
    assert moved, (victim_id[-6:], [(e["node_id"][-6:], e["state"], e["reason"][:30]) for j in jobs[:4] for e in j["executions"]])
    for j in moved:
        done = [e for e in j["executions"] if e["state"] == "completed"]
        assert done and done[0]["node_id"] != victim_id
        lost = [e["reason"] for e in j["executions"] if e["node_id"] == victim_id and e["state"] == "failed"]
        assert all(r == "the node was lost" or r.startswith(("bid_accepted failed", "ask for bid failed"))
                   for r in lost), lost
    # the dead node's containers are its restart's business; clean them here
    leftover = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=bacalhau.node_id={victim_id}"],
                              capture_output=True, text=True, check=True).stdout.split()
    if leftover:
        subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True, check=False)


@pytest.mark.docker
@pytest.mark.slow
def test_killing_the_requester_mid_batch_loses_no_job_and_runs_none_twice(served) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    req, computes, client = start_cluster(served, 2)
    ids = [client.submit({"engine": "docker", "docker": {"image": "bacalhau/busybox:latest", "parameters":
                                                          ["sh", "-c", f"sleep 2; echo job-{i}"]}}) for i in range(10)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for j in ids if any(e["state"] in TAKEN for e in client.job(j)["executions"])) >= 4:
            break
        time.sleep(0.1)
    req.stop(signal.SIGKILL)
    time.sleep(3)          # jobs finish while no requester listens: their callbacks are lost
    req.start()
    req.wait_ready()
    deadline = time.monotonic() + 60
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        pending = {j for j in pending if client.job(j)["state"] not in ("completed", "failed", "cancelled")}
        time.sleep(0.2)
    assert not pending
    for i, job_id in enumerate(ids):
        job = client.job(job_id)
        assert job["state"] == "completed", (job["reason"], [(e["state"], e["reason"]) for e in job["executions"]])
        ran = [e for e in job["executions"] if e.get("result")]
        assert len(ran) == 1, [(e["state"], e["reason"]) for e in job["executions"]]   # ran exactly once
        assert req.cli("logs", job_id).stdout == f"job-{i}\n"


@pytest.mark.docker
@pytest.mark.slow
def test_a_compute_node_restarted_mid_job_reports_it_failed_and_it_runs_elsewhere(served) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    req, computes, client = start_cluster(served, 2)
    job_id = client.submit({"engine": "docker", "docker": {"image": "bacalhau/busybox:latest",
                                                           "parameters": ["sh", "-c", "sleep 3; echo done"]}})
    deadline = time.monotonic() + 30
    while not (running := [e for e in client.job(job_id)["executions"] if e["state"] in TAKEN]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = running[0]
    victim = next(c for c in computes if c.name_matches(client, first["node_id"]))
    time.sleep(0.5)   # its container is up
    victim.stop(signal.SIGKILL)
    victim.start()
    victim.wait_ready()
    deadline = time.monotonic() + 60
    while client.job(job_id)["state"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    job = client.job(job_id)
    assert job["state"] == "completed", job["reason"]
    mine = next(e for e in job["executions"] if e["id"] == first["id"])
    assert mine["state"] == "failed" and "compute node restarted" in mine["reason"]
    done = [e for e in job["executions"] if e["state"] == "completed"]
    assert done and done[0]["node_id"] != first["node_id"]
    orphans = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=bacalhau.execution_id={first['id']}"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert orphans == []
