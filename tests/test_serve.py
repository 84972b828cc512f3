"""`bacalhau serve` as a real process: join instructions, persistent identity, signals, restarts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import BACALHAU, join_args


@pytest.mark.slow
def test_serve_prints_the_join_command_keeps_its_peer_id_and_exits_0_on_sigterm(served) -> None:  # type: ignore[no-untyped-def]
    node = served().start()
    text = node.wait_ready()
    m = re.search(r"bacalhau serve --node-type compute --peer (/ip4/[0-9.]+/tcp/(\d+)/p2p/(12D3KooW\w+))", text)
    assert m, text
    assert int(m.group(2)) == node.swarm_port
    assert f"BACALHAU_API_PORT={node.api_port}" in text and "BACALHAU_API_HOST=127.0.0.1" in text
    peer_id = m.group(3)
    assert node.client().node_id()["id"] == peer_id
    # the embedded IPFS node's own line, and `ipfs id` listing addresses a Kubo node can dial
    ipfs = json.loads(node.cli("ipfs", "id").stdout)
    text = node.log.read_text(errors="replace")     # the whole banner by now
    assert "ipfs swarm connect /ip4/" in text and ipfs["ID"] in text and ipfs["ID"] != peer_id
    assert ipfs["Addresses"] and not any("/0.0.0.0/" in a for a in ipfs["Addresses"])
    assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in ipfs["Addresses"])
    assert node.stop(signal.SIGTERM) == 0

    node.start()
    node.wait_ready()
    assert node.client().node_id()["id"] == peer_id
    assert node.stop(signal.SIGINT) == 0


@pytest.mark.docker
@pytest.mark.slow
def test_requester_killed_and_restarted_keeps_its_jobs_and_peer_id(served) -> None:  # type: ignore[no-untyped-def]
    node = served().start()
    node.wait_ready()
    done = node.cli("docker", "run", "bacalhau/busybox", "--", "echo", "before")
    assert done.returncode == 0 and done.stdout == "before\n", done.stderr
    pending = node.cli("docker", "run", "--id-only", "bacalhau/busybox", "--", "sleep", "30")
    peer_id = node.client().node_id()["id"]
    jobs_before = {j["id"]: j["state"] for j in node.client().list_jobs(0)}
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL

    node.start()
    node.wait_ready()
    client = node.client()
    assert client.node_id()["id"] == peer_id
    jobs_after = {j["id"]: j["state"] for j in client.list_jobs(0)}
    assert set(jobs_after) == set(jobs_before)
    first = [j for j, s in jobs_before.items() if s == "completed"]
    assert first and all(jobs_after[j] == "completed" for j in first)
    # the job that was running when the node died is not lost: the restarted compute node reports its
    # execution failed, and with no other node to retry on, the job says why it ended
    job_id = pending.stdout.strip()
    deadline = time.monotonic() + 20
    while (job := client.job(job_id))["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["state"] == "failed", job
    assert "compute node restarted" in job["reason"], job["reason"]
    # the orphan container of the first execution was removed by the restarted compute node
    first_execution = job["executions"][0]["id"]
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", "label=bacalhau.execution_id=" + first_execution],
                                capture_output=True, text=True, check=True).stdout.split()
    assert containers == []


@pytest.mark.docker
@pytest.mark.slow
def test_a_second_node_joins_with_the_printed_command_and_runs_jobs(served) -> None:  # type: ignore[no-untyped-def]
    first = served("first", "--labels", "role=first").start()
    text = first.wait_ready()
    peer, key = join_args(text)
    # a node without the cluster's key is refused, and says why
    stranger = served("stranger", "--node-type", "compute", "--peer", peer).start()
    stranger.wait_ready()
    second = served("second", "--node-type", "compute", "--peer", peer, "--swarm-key", key, "--labels",
                    "role=second").start()
    second.wait_ready()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        nodes = first.client().nodes()
        if len(nodes) == 2:
            break
        time.sleep(0.2)
    assert len(nodes) == 2
    assert all(n["labels"].get("role") in ("first", "second") for n in nodes)
    deadline = time.monotonic() + 30
    while "swarm key" not in stranger.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "swarm key" in stranger.log.read_text()
    res = first.cli("docker", "run", "-s", "role=second", "bacalhau/busybox", "--", "echo", "on-second")
    assert res.returncode == 0 and res.stdout == "on-second\n", res.stderr
    job = json.loads(first.cli("describe", "-o", "json", first.client().list_jobs(1)[0]["id"]).stdout)
    second_id = next(n["node_id"] for n in nodes if n["labels"].get("role") == "second")
    assert job["executions"][-1]["node_id"] == second_id
    # a node that leaves is dropped within its NodeInfo TTL (5 s) plus one expiry sweep (2.5 s)
    left_at = time.monotonic()
    assert second.stop(signal.SIGTERM) == 0
    while any(n["node_id"] == second_id for n in first.client().nodes()):
        assert time.monotonic() - left_at < 9, "the node that left is still listed"
        time.sleep(0.2)


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_lets_a_running_job_finish_and_the_limits_show_in_node_list(served) -> None:  # type: ignore[no-untyped-def]
    node = served("limited", "--limit-total-cpu", "1.5", "--limit-total-memory", "2Gi", "--labels", "a=1,b=2").start()
    node.wait_ready()
    info = node.client().nodes()[0]
    assert info["capacity_total"] == {"cpu": 1.5, "memory": 2 * 1024**3}
    assert info["labels"] == {"a": "1", "b": "2"}
    job_id = node.cli("docker", "run", "--id-only", "bacalhau/busybox", "--", "sh", "-c", "sleep 1; echo finished").stdout.strip()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        executions = node.client().job(job_id)["executions"]
        if executions and executions[-1]["state"] in ("bid_accepted", "running"):
            break
        time.sleep(0.02)
    started = time.monotonic()
    assert node.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started >= 0.5          # it waited for the job
    node.start()
    node.wait_ready()
    job = node.client().job(job_id)
    assert job["state"] == "completed", [(e["state"], e["reason"]) for e in job["events"]][5:]
    assert node.cli("logs", job_id).stdout == "finished\n"


@pytest.mark.slow
def test_bad_serve_flags_get_one_clear_error(served) -> None:  # type: ignore[no-untyped-def]
    node = served("bad", "--node-type", "banana")
    out = subprocess.run([*BACALHAU, *node.args], env=node.env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "--node-type" in out.stderr and "Traceback" not in out.stderr
