"""In-process cluster over real libp2p on 127.0.0.1: 1 requester + 3 compute nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from bacalhau.models import Engine, ExecutionState, JobSpec, JobState, NodeType, Resources
from bacalhau.node import Node
from tests.conftest import node_config, run_cli


async def wait_terminal(node: Node, job_id: str, timeout: float = 30) -> None:
    assert node.requester is not None
    with trio.fail_after(timeout):
        while not (await node.requester.store.get_job(job_id, full=False)).state.terminal:
            await node.requester.wait_for_change(job_id, 1)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Node, list[Node]]]:
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "req", node_types=(NodeType.REQUESTER,))).run)
        computes = []
        for i, (zone, cpu) in enumerate([("eu", 1.0), ("us", 1.0), ("us", 4.0)]):
            cfg = node_config(tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,), serve_api=False,
                              peers=(req.addrs()[0],), labels={"zone": zone, "name": f"c{i}"},
                              capacity=Resources(cpu=cpu, memory=8 * 1024**3))
            computes.append(await nursery.start(Node(cfg).run))
        with trio.fail_after(20):
            while len(req.requester.nodes.alive()) < 3:
                await trio.sleep(0.05)
        yield req, computes
        nursery.cancel_scope.cancel()


async def test_jobs_are_routed_by_labels_and_capacity(cluster: tuple[Node, list[Node]]) -> None:
    req, computes = cluster
    job = await req.requester.submit(JobSpec(engine=Engine.NOOP, node_selector="zone=eu"))
    await wait_terminal(req, job.id)
    done = await req.requester.store.get_job(job.id)
    assert done.state == JobState.COMPLETED
    assert [e.node_id for e in done.executions if e.state == ExecutionState.COMPLETED] == [computes[0].node_id]

    big = await req.requester.submit(JobSpec(engine=Engine.NOOP, resources=Resources(cpu=2)))
    await wait_terminal(req, big.id)
    done = await req.requester.store.get_job(big.id)
    assert done.state == JobState.COMPLETED
    assert [e.node_id for e in done.executions] == [computes[2].node_id]

    huge = await req.requester.submit(JobSpec(engine=Engine.NOOP, resources=Resources(cpu=64)))
    await wait_terminal(req, huge.id)
    done = await req.requester.store.get_job(huge.id)
    assert done.state == JobState.FAILED and done.reason == "no node has the resources the job asks for"


async def test_a_requester_only_node_has_no_compute_and_says_so(cluster: tuple[Node, list[Node]]) -> None:
    req, _ = cluster
    job = await req.requester.submit(JobSpec(engine=Engine.WASM, wasm={"module": "base64:AA=="},
                                             node_selector="zone=mars"))
    await wait_terminal(req, job.id)
    done = await req.requester.store.get_job(job.id)
    assert done.state == JobState.FAILED and "zone=mars" in done.reason


@pytest.mark.docker
async def test_docker_job_on_a_remote_node_results_and_logs_come_through_the_requester(
    cluster: tuple[Node, list[Node]], tmp_path: Path
) -> None:
    req, computes = cluster
    res = await run_cli(req, "docker", "run", "-s", "name=c1", "bacalhau/busybox:latest", "--", "sh", "-c",
                        "echo remote-out; echo remote-err >&2; echo file > /outputs/f.txt")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "remote-out\n" and "remote-err" in res.stderr
    listed = await run_cli(req, "list", "-o", "json")
    import json

    job_id = json.loads(listed.stdout)[0]["id"]
    job = await req.requester.store.get_job(job_id)
    assert job.executions[-1].node_id == computes[1].node_id
    got = await run_cli(req, "get", job_id, "-o", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert (Path(got.stdout.strip()) / "outputs" / "f.txt").read_text() == "file\n"
    logs = await run_cli(req, "logs", job_id)
    assert logs.returncode == 0 and logs.stdout == "remote-out\n" and "remote-err" in logs.stderr


@pytest.mark.docker
@pytest.mark.slow
async def test_get_fetches_a_large_result_over_ipfs_from_the_node_that_ran_it_with_progress(
    cluster: tuple[Node, list[Node]], tmp_path: Path
) -> None:
    import hashlib

    req, computes = cluster
    job_id = (await run_cli(req, "docker", "run", "--id-only", "-s", "name=c0", "bacalhau/busybox:latest", "--",
                            "sh", "-c", "head -c 30000000 /dev/urandom > /outputs/big; "
                            "sha256sum /outputs/big | cut -d' ' -f1 > /outputs/big.sha")).stdout.strip()
    with trio.fail_after(60):
        while not (job := await req.requester.store.get_job(job_id)).state.terminal:
            await trio.sleep(0.2)
    execution = job.executions[-1]
    assert execution.node_id == computes[0].node_id and execution.result_ref.startswith("ipfs://")
    cid = execution.result_ref.removeprefix("ipfs://")
    from bacalhau.ipfs.unixfs import cid_to_bytes

    assert not req.blockstore.has(cid_to_bytes(cid))
    got = await run_cli(req, "get", job_id, "-o", str(tmp_path))
    assert got.returncode == 0, got.stderr
    out = Path(got.stdout.strip())
    assert hashlib.sha256((out / "outputs" / "big").read_bytes()).hexdigest() == \
        (out / "outputs" / "big.sha").read_text().strip()
    assert (out / "exitCode").read_text().strip() == "0"
    assert "%)" in got.stderr                          # progress against the known size
    assert req.blockstore.has(cid_to_bytes(cid))       # it came over bitswap, not through c0's bprotocol


@pytest.mark.docker
async def test_get_completes_a_result_whose_root_alone_is_held_as_a_cut_short_fetch_leaves_it(
        cluster: tuple[Node, list[Node]], tmp_path: Path) -> None:
    from bacalhau.ipfs.dagpb import decode_links
    from bacalhau.ipfs.unixfs import cid_to_bytes

    req, computes = cluster
    job_id = (await run_cli(req, "docker", "run", "--id-only", "-s", "name=c1", "bacalhau/busybox:latest", "--",
                            "sh", "-c", "echo kept > /outputs/note")).stdout.strip()
    await wait_terminal(req, job_id)
    execution = (await req.requester.store.get_job(job_id)).executions[-1]
    root = cid_to_bytes(execution.result_ref.removeprefix("ipfs://"))
    req.blockstore.put(root, computes[1].blockstore.get(root))     # the root came, then the fetch broke off
    children = [link.cid for link in decode_links(req.blockstore.get(root))]
    assert children and not any(req.blockstore.has(c) for c in children)
    got = await run_cli(req, "get", job_id, "-o", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert (Path(got.stdout.strip()) / "outputs" / "note").read_text() == "kept\n"
    assert all(req.blockstore.has(c) for c in children)           # completed over bitswap


async def test_node_list_shows_every_compute_node(cluster: tuple[Node, list[Node]]) -> None:
    req, computes = cluster
    import json

    res = await run_cli(req, "node", "list", "-o", "json")
    nodes = json.loads(res.stdout)
    assert sorted(n["node_id"] for n in nodes) == sorted(c.node_id for c in computes)
    assert {n["labels"]["name"] for n in nodes} == {"c0", "c1", "c2"}


@pytest.mark.docker
@pytest.mark.slow
async def test_devstack_runs_a_cluster_in_one_command(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bacalhau.cli.main", "devstack", "-n", "3", "--port", str(port), "--repo",
         str(tmp_path / "dev")], stderr=subprocess.DEVNULL, env=os.environ)
    try:
        env = {"BACALHAU_API_PORT": str(port), "BACALHAU_API_HOST": "127.0.0.1"}
        with trio.fail_after(60):
            while True:
                res = await run_cli(None, "node", "list", "-o", "json", env=env)
                if res.returncode == 0 and len(__import__("json").loads(res.stdout)) == 3:
                    break
                await trio.sleep(0.3)
        res = await run_cli(None, "docker", "run", "bacalhau/busybox:latest", "--", "echo", "devstack", env=env)
        assert res.returncode == 0 and res.stdout == "devstack\n", res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0


async def test_compute_nodes_advertise_their_log_stream_address(cluster: tuple[Node, list[Node]]) -> None:
    req, computes = cluster
    infos = {n.node_id: n for n in req.requester.nodes.alive()}
    for c in computes:
        assert infos[c.node_id].log_stream_addr == c.addrs()[0]
        assert infos[c.node_id].log_stream_addr.endswith(f"/p2p/{c.node_id}")


@pytest.mark.docker
@pytest.mark.slow
async def test_one_nodes_result_feeds_a_job_on_another_node_through_bitswap(
    cluster: tuple[Node, list[Node]], tmp_path: Path
) -> None:
    import json

    req, computes = cluster
    first = await run_cli(req, "docker", "run", "-s", "name=c0", "bacalhau/busybox:latest", "--", "sh", "-c",
                          "head -c 3000000 /dev/urandom > /outputs/blob; md5sum /outputs/blob | cut -c1-32")
    assert first.returncode == 0, first.stderr
    job = json.loads((await run_cli(req, "describe", "-o", "json",
                                    json.loads((await run_cli(req, "list", "-o", "json")).stdout)[0]["id"])).stdout)
    assert job["executions"][-1]["node_id"] == computes[0].node_id
    cid = job["executions"][-1]["result_ref"].removeprefix("ipfs://")
    second = await run_cli(req, "docker", "run", "-s", "name=c2", "-i", f"ipfs://{cid}:/prev",
                           "bacalhau/busybox:latest", "--", "sh", "-c", "md5sum /prev/outputs/blob | cut -c1-32")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout          # the same bytes, fetched from c0 by c2
    # and the requester (which ran neither) serves it to the CLI, fetching it too
    got = await run_cli(req, "ipfs", "cat", f"{cid}")
    assert got.returncode == 1   # a directory is not a file: a clear error, not a crash
    blob = await run_cli(req, "ipfs", "get", cid, "-o", str(tmp_path / "res"))
    assert blob.returncode == 0, blob.stderr
    assert (tmp_path / "res" / "outputs" / "blob").stat().st_size == 3_000_000
