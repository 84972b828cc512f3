"""Live logs end to end: compute log server -> requester websocket -> the real CLI."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.log_frames import HEADER
from bacalhau.models import Engine, JobSpec, NodeType, NoopSpec, Resources
from bacalhau.node import Node, NodeDeps
from tests.conftest import node_config, run_cli
from tests.test_flow_inmemory import wait_terminal

IMAGE = "bacalhau/busybox:latest"


@pytest.mark.docker
async def test_binary_output_long_lines_and_no_final_newline_pass_whole(single_node: Node) -> None:
    # 1 MB line of random bytes (non-UTF-8), then stderr, then a last write with no newline right before exit
    script = "head -c 1000000 /dev/urandom > /outputs/blob; cat /outputs/blob; echo; echo err >&2; printf tail"
    res = await run_cli(single_node, "docker", "run", "-f", IMAGE, "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    job_id = json.loads((await run_cli(single_node, "list", "-o", "json")).stdout)[0]["id"]
    got = await run_cli(single_node, "get", job_id, "-o", str(single_node.config.repo_dir / "dl"))
    blob = (Path(got.stdout.strip()) / "outputs" / "blob").read_bytes()
    assert res.stdout_bytes == blob + b"\ntail"
    assert "err" in res.stderr


@pytest.mark.docker
@pytest.mark.slow
async def test_logs_follow_exits_with_the_jobs_exit_code_and_replays_after_the_end(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "for i in 1 2 3; do echo line $i; usleep 100000; done; exit 5")
    job_id = res.stdout.strip()
    followed = await run_cli(single_node, "logs", "-f", job_id)
    assert followed.returncode == 5 and followed.stdout == "line 1\nline 2\nline 3\n"
    again = await run_cli(single_node, "logs", job_id)   # after the end: the whole log, exit 0
    assert again.returncode == 0 and again.stdout == followed.stdout


@pytest.mark.docker
@pytest.mark.slow
async def test_twenty_followers_of_one_job_all_get_everything(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "usleep 300000; seq 1 20000")
    job_id = res.stdout.strip()
    expected = "".join(f"{i}\n" for i in range(1, 20001))
    outputs: list[str] = []

    async def follow() -> None:
        outputs.append((await run_cli(single_node, "logs", "-f", job_id)).stdout)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(follow)
    assert len(outputs) == 20 and all(o == expected for o in outputs)


@pytest.mark.docker
async def test_a_dropped_connection_resumes_from_its_offsets_without_loss_or_duplicates(single_node: Node) -> None:
    from websockets.asyncio.client import connect  # noqa: F401  (the CLI uses the sync client; see below)
    from websockets.sync.client import connect as sync_connect

    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "seq 1 5000; usleep 300000; seq 5001 10000")
    job_id = res.stdout.strip()
    base = f"ws://127.0.0.1:{single_node.api_port}/api/v1/jobs/{job_id}/logs"

    def read(url: str, stop_after: int | None, offset: int = 0) -> tuple[bytes, str, int]:
        data, execution = b"", ""
        with sync_connect(url) as ws:
            for msg in ws:
                if isinstance(msg, str):
                    event = json.loads(msg)
                    execution = event.get("execution_id", execution)
                    if event["type"] == "end":
                        break
                    continue
                kind, off, length = HEADER.unpack_from(msg)
                if kind == 1:
                    assert off == offset, "frames must be contiguous"
                    data += msg[HEADER.size:]
                    offset += length
                if stop_after is not None and offset >= stop_after:
                    break  # drop the connection mid-stream
        return data, execution, offset

    first, execution, offset = await trio.to_thread.run_sync(read, base + "?follow=1", 1000)
    rest, _, _ = await trio.to_thread.run_sync(
        read, f"{base}?follow=1&execution_id={execution}&stdout_offset={offset}&stderr_offset=0", None, offset)
    expected = "".join(f"{i}\n" for i in range(1, 10001)).encode()
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(expected).digest()


@pytest.fixture
async def mem_cluster(tmp_path: Path) -> AsyncIterator[tuple[Node, list[Node], InMemoryNetwork]]:
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,), node_info_ttl=1.5),
                                       NodeDeps(network=net)).run)
        computes = []
        for i in range(2):
            cfg = NodeConfig(repo_dir=tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,), node_info_interval=0.2,
                             capacity=Resources(cpu=1, memory=1024**3), labels={"name": f"c{i}"})
            computes.append(await nursery.start(Node(cfg, NodeDeps(network=net, executors={Engine.NOOP: NoopExecutor()})).run))
        with trio.fail_after(5):
            while len(req.requester.nodes.alive()) < 2:
                await trio.sleep(0.05)
        yield req, computes, net
        nursery.cancel_scope.cancel()


async def test_attaching_before_the_job_starts_waits_then_streams(
    mem_cluster: tuple[Node, list[Node], InMemoryNetwork]
) -> None:
    req, _, _ = mem_cluster
    # fill both nodes so the next job queues
    blockers = [await req.requester.submit(JobSpec(engine=Engine.NOOP, resources=Resources(cpu=1),
                                                   node_selector=f"name=c{i}", noop=NoopSpec(sleep=1.5)))
                for i in range(2)]
    queued = await req.requester.submit(JobSpec(engine=Engine.NOOP, resources=Resources(cpu=1),
                                                noop=NoopSpec(stdout="finally\n")))
    started = trio.current_time()
    res = await run_cli(req, "logs", "-f", queued.id)
    assert res.returncode == 0 and res.stdout == "finally\n"
    assert trio.current_time() - started >= 1.0   # it waited for room, then streamed
    for b in blockers:
        await wait_terminal(req, b.id)


@pytest.mark.slow
async def test_a_job_retried_on_another_node_is_followed_there(
    mem_cluster: tuple[Node, list[Node], InMemoryNetwork], caplog: pytest.LogCaptureFixture
) -> None:
    req, computes, net = mem_cluster
    job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="attempt\n", sleep=2)))
    with trio.fail_after(5):
        while not (running := [e for e in (await req.requester.store.get_job(job.id)).executions
                               if e.state.value in ("bid_accepted", "running")]):
            await trio.sleep(0.02)
    victim = next(c for c in computes if c.node_id == running[0].node_id)
    async with trio.open_nursery() as nursery:
        results = []

        async def follow() -> None:
            results.append(await run_cli(req, "logs", "-f", job.id))

        nursery.start_soon(follow)
        with trio.fail_after(10):   # the follower reads the first attempt's log (a slow CLI start came late)
            while not victim.compute.log_followers:
                await trio.sleep(0.02)
        net.take_down(victim.node_id)          # the node dies mid-stream
        victim.config.node_info_interval = 3600
    res = results[0]
    assert res.returncode == 0, res.stderr
    assert "retried on another node" in res.stderr
    assert res.stdout == "attempt\nattempt\n"   # first attempt's output, then the retry's, each whole
    # the follower's handler ended cleanly (it once rebound its `gone` event to the failed execution)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, errors


@pytest.mark.slow
async def test_when_every_node_dies_the_follower_gets_a_clear_end(
    mem_cluster: tuple[Node, list[Node], InMemoryNetwork]
) -> None:
    req, computes, net = mem_cluster
    job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="x\n", sleep=30)))
    async with trio.open_nursery() as nursery:
        results = []

        async def follow() -> None:
            results.append(await run_cli(req, "logs", "-f", job.id, timeout=30))

        nursery.start_soon(follow)
        await trio.sleep(0.5)
        for c in computes:
            net.take_down(c.node_id)
            c.config.node_info_interval = 3600
    res = results[0]
    assert res.returncode == 1
    assert "job failed" in res.stderr and "lost" in res.stderr


@pytest.mark.docker
@pytest.mark.slow
async def test_a_stalled_follower_slows_nobody_and_a_gone_one_frees_its_stream(single_node: Node) -> None:
    from websockets.sync.client import connect

    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "usleep 300000; head -c 30000000 /dev/zero | tr '\\0' x; echo; touch /outputs/printed; sleep 30")
    job_id = res.stdout.strip()
    url = f"ws://127.0.0.1:{single_node.api_port}/api/v1/jobs/{job_id}/logs?follow=1"
    stalled = await trio.to_thread.run_sync(lambda: connect(url).__enter__())   # connects, never reads
    try:
        with trio.fail_after(60):   # the container is not slowed: it gets past its output meanwhile
            while True:
                execs = [e for e in single_node.compute._scopes]  # noqa: SLF001  (which execution runs)
                if execs and (single_node.compute.execution_dir(execs[0]).outputs / "printed").exists():
                    break
                await trio.sleep(0.1)
        normal = await run_cli(single_node, "logs", job_id, timeout=60)   # another follower gets it all
        assert normal.returncode == 0 and len(normal.stdout_bytes) == 30_000_001
        assert single_node.compute.log_followers >= 1   # the stalled stream is open (held back, not done)
    finally:
        await trio.to_thread.run_sync(stalled.close)
    with trio.fail_after(10):   # the client went away: its stream is freed on every hop
        while single_node.compute.log_followers:
            await trio.sleep(0.05)
    await run_cli(single_node, "cancel", job_id)
