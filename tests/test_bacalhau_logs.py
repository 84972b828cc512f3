"""Bacalhau 1.0's logs websocket (/requester/logs), spoken as Go's CLI speaks it: the signed LogsPayload first,
then {"Tag","Data"} text frames until close 1000."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.models import DockerSpec, Engine, ExecutionState, JobSpec, NoopSpec
from bacalhau.node import Node, NodeDeps
from bacalhau.rsa_identity import client_id_of, load_or_create, public_key_b64, sign_payload
from tests.conftest import node_config
from tests.test_flow_inmemory import wait_terminal
from tests.test_logs import mem_cluster  # noqa: F401  (a fixture)

IMAGE = "bacalhau/busybox:latest"


def envelope(key: Any, payload: dict[str, Any]) -> str:
    """The signed envelope as the Go CLI sends it: compact json.Marshal of the payload, false values omitted."""
    raw = json.dumps({k: v for k, v in payload.items() if v is not False}, separators=(",", ":"))
    return '{"client_public_key":%s,"payload":%s,"signature":%s}' % (
        json.dumps(public_key_b64(key.public_key())), raw, json.dumps(sign_payload(key, raw.encode())))


def logs_payload(key: Any, job_id: str, execution_id: str, *, follow: bool) -> dict[str, Any]:
    return {"ClientID": client_id_of(key.public_key()), "JobID": job_id, "ExecutionID": f"e-{execution_id}",
            "WithHistory": True, "Follow": follow}


def read_frames(port: int | None, first: str | None, path: str = "/requester/logs",
                on_frame: Any = None) -> tuple[list[dict[str, Any]], int | None, str]:
    """Send `first` (nothing if None), then read frames until the server closes: (frames, close code, reason)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frames: list[dict[str, Any]] = []
    with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10) as ws:
        try:
            if first is not None:
                ws.send(first)   # a server that refuses at once may have closed already
            while True:
                message = ws.recv(timeout=30)
                assert isinstance(message, str), "Go's frames are text"
                frames.append(json.loads(message))
                if on_frame is not None:
                    on_frame()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the server closed without a close frame"
            return frames, exc.rcvd.code, exc.rcvd.reason


def joined(frames: list[dict[str, Any]], tag: int) -> str:
    assert all(set(f) == {"Tag", "Data"} and f["Tag"] in (1, 2) for f in frames), frames
    return "".join(f["Data"] for f in frames if f["Tag"] == tag)


@pytest.fixture
async def noop_node(tmp_path: Path) -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",)),
                                        NodeDeps(network=InMemoryNetwork())).run)
        yield node
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="session")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_or_create(tmp_path_factory.mktemp("client") / "user_id.pem")


async def running_execution(node: Node, job_id: str) -> str:
    assert node.requester is not None
    with trio.fail_after(30):
        while True:
            job = await node.requester.store.get_job(job_id, full=False)
            running = [e for e in job.executions if e.state in (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING)]
            if running:
                return running[0].id
            await trio.sleep(0.02)


async def test_a_finished_job_is_replayed_then_closed_1000_on_both_paths(noop_node: Node, rsa_key: Any) -> None:
    assert noop_node.requester is not None
    job = await noop_node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="héllo\nworld\n")),
                                           client_id=client_id_of(rsa_key.public_key()))
    await wait_terminal(noop_node, job.id)
    done = await noop_node.requester.store.get_job(job.id, full=False)
    first = envelope(rsa_key, logs_payload(rsa_key, job.id, done.executions[0].id, follow=False))
    for path in ("/requester/logs", "/api/v1/requester/logs"):
        frames, code, reason = await trio.to_thread.run_sync(read_frames, noop_node.api_port, first, path)
        assert code == 1000, reason
        assert joined(frames, 1) == "héllo\nworld\n" and joined(frames, 2) == ""


@pytest.mark.docker
async def test_a_running_docker_job_is_followed_live_stdout_and_stderr_then_closed_1000(
    single_node: Node, rsa_key: Any
) -> None:
    assert single_node.requester is not None
    script = "for i in 1 2 3; do echo out $i; echo err $i >&2; usleep 300000; done"
    job = await single_node.requester.submit(
        JobSpec(engine=Engine.DOCKER, docker=DockerSpec(image=IMAGE, entrypoint=["sh", "-c", script])),
        client_id=client_id_of(rsa_key.public_key()))
    execution_id = await running_execution(single_node, job.id)
    first = envelope(rsa_key, logs_payload(rsa_key, job.id, execution_id, follow=True))
    seen_at: list[float] = []
    frames, code, _ = await trio.to_thread.run_sync(
        read_frames, single_node.api_port, first, "/requester/logs", lambda: seen_at.append(time.time()))
    assert code == 1000
    assert joined(frames, 1) == "out 1\nout 2\nout 3\n" and joined(frames, 2) == "err 1\nerr 2\nerr 3\n"
    finished = await single_node.requester.store.get_job(job.id, full=False)
    ran = next(e for e in finished.executions if e.id == execution_id)
    assert ran.state == ExecutionState.COMPLETED
    assert seen_at[0] < ran.updated_at   # the first frame came while it ran, not replayed after


async def test_a_finished_execution_whose_node_is_away_is_replayed_from_its_run_output(
    mem_cluster: tuple[Node, list[Node], InMemoryNetwork], rsa_key: Any  # noqa: F811
) -> None:
    req, computes, net = mem_cluster
    assert req.requester is not None
    job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="kept by the requester\n")),
                                     client_id=client_id_of(rsa_key.public_key()))
    await wait_terminal(req, job.id)
    ran = (await req.requester.store.get_job(job.id, full=False)).executions[0]
    net.take_down(ran.node_id)   # the only node that holds the whole log
    first = envelope(rsa_key, logs_payload(rsa_key, job.id, ran.id, follow=True))
    frames, code, reason = await trio.to_thread.run_sync(read_frames, req.api_port, first)
    assert code == 1000, reason
    assert joined(frames, 1) == "kept by the requester\n"
