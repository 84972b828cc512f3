"""The shortened start of a job as an attacker or an accident would bend it: the cluster id the client keeps
in its state dir (cli/client.py) stale, forged, damaged or kept for another address; the containers a compute
node makes while its bids await their answers (a requester that asks and never answers, rejects, cancels; an
image that is not here; a crash between a bid and its answer). The Docker tests use the real engine."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.proxies import ComputeProxy
from bacalhau.bprotocol.transport import InMemoryNetwork, typed_handler
from bacalhau.cli.client import CLUSTER_CACHE, ApiClient
from bacalhau.config import DEFAULT_JOB_CPU, DEFAULT_JOB_MEMORY
from bacalhau.errors import UserError
from bacalhau.executors.docker import LABEL_EXECUTION, LABEL_NODE, _remove
from bacalhau.models import DockerSpec, ExecutionState, Job, JobSpec, Resources, new_id
from bacalhau.node import Node, NodeDeps
from bacalhau.signing import cluster_id_of
from tests.conftest import node_config
from tests.test_client import http_server, json_answer

NOOP = {"engine": "noop", "docker": None}


@pytest.fixture
async def api_node(tmp_path: Path) -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",)),
                                        NodeDeps(network=InMemoryNetwork())).run)
        yield node
        nursery.cancel_scope.cancel()


class Recording(ApiClient):
    """The real client, noting each request it makes and how it ended."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, str, str]] = []

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                **query: Any) -> Any:
        try:
            answer = super().request(method, path, body, headers, **query)
        except UserError as exc:
            self.calls.append((method, path, f"refused: {exc}"))
            raise
        self.calls.append((method, path, "ok"))
        return answer


@contextmanager
def state_dir(path: Path) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    old = os.environ.get("BACALHAU_DIR")
    os.environ["BACALHAU_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            del os.environ["BACALHAU_DIR"]
        else:
            os.environ["BACALHAU_DIR"] = old


async def submit(port: int) -> tuple[str, Recording]:
    client = Recording("127.0.0.1", port)

    def go() -> str:
        try:
            return client.submit(NOOP)
        finally:
            client.close()

    return await trio.to_thread.run_sync(go), client


def kept(state: Path) -> Any:
    return json.loads((state / CLUSTER_CACHE).read_text())


async def test_a_forged_cached_cluster_id_only_makes_the_node_refuse_then_the_client_asks_it(
        api_node: Node, tmp_path: Path) -> None:
    address = f"127.0.0.1:{api_node.api_port}"
    other = cluster_id_of("ab" * 32)
    with state_dir(tmp_path / "state") as state:
        (state / CLUSTER_CACHE).write_text(json.dumps({address: other}))
        job_id, client = await submit(api_node.api_port)
    # the signature made for the forged id went to this node alone, which refused it; the node's own word
    # was asked once and the submit signed again
    assert [(m, p) for m, p, _ in client.calls] == [("POST", "/api/v1/jobs"), ("GET", "/api/v1/id"),
                                                    ("POST", "/api/v1/jobs")]
    assert "signed for another cluster" in client.calls[0][2]
    assert client.calls[2][2] == "ok"
    assert [j.id for j in await api_node.requester.store.list_jobs(None)] == [job_id]  # type: ignore[union-attr]
    assert kept(state) == {address: api_node.cluster_id}


async def test_the_cluster_id_is_kept_by_address_and_saves_a_request_on_the_next_submit(
        api_node: Node, tmp_path: Path) -> None:
    address = f"127.0.0.1:{api_node.api_port}"
    elsewhere = f"127.0.0.1:{api_node.api_port + 1}"
    with state_dir(tmp_path / "state") as state:
        (state / CLUSTER_CACHE).write_text(json.dumps({elsewhere: cluster_id_of("cd" * 32)}))
        _, first = await submit(api_node.api_port)
        assert [p for _, p, _ in first.calls] == ["/api/v1/id", "/api/v1/jobs"]   # another address's id unused
        assert kept(state) == {elsewhere: cluster_id_of("cd" * 32), address: api_node.cluster_id}
        _, second = await submit(api_node.api_port)
    assert second.calls == [("POST", "/api/v1/jobs", "ok")]


DAMAGED = (b"not json", b"[1, 2]", b'{"ADDR": 7}', b'{"ADDR": "../../etc"}', b'{"ADDR": "' + b"a" * 40_000 + b'"}',
           b"\xff\xfe")


async def test_a_damaged_cache_file_is_ignored_and_rewritten(api_node: Node, tmp_path: Path) -> None:
    address = f"127.0.0.1:{api_node.api_port}"
    for n, content in enumerate(DAMAGED):
        with state_dir(tmp_path / f"state{n}") as state:
            (state / CLUSTER_CACHE).write_bytes(content.replace(b"ADDR", address.encode()))
            _, client = await submit(api_node.api_port)
        assert [p for _, p, _ in client.calls] == ["/api/v1/id", "/api/v1/jobs"], content[:20]
        assert kept(state)[address] == api_node.cluster_id


def test_a_refusal_of_the_id_the_api_gave_is_not_asked_again_in_a_loop(tmp_path: Path) -> None:
    # a server that refuses every signature as another cluster's, whatever id it gives: no real node does
    # that (it takes the id it gives), so a few lines of HTTP stand in for it
    refusal = json_answer({"error": "the request was signed for another cluster (x), not this one (y)"},
                          "400 Bad Request")

    def answer(n: int) -> bytes:
        return json_answer({"cluster_id": "e" * 32}) if n == 1 else refusal

    with http_server(answer, per_connection=100) as (port, counts), state_dir(tmp_path / "state") as state:
        (state / CLUSTER_CACHE).write_text(json.dumps({f"127.0.0.1:{port}": "f" * 32}))
        client = Recording("127.0.0.1", port)
        with pytest.raises(UserError, match="another cluster"):
            client.submit(NOOP)
        client.close()
        assert [p for _, p, _ in client.calls] == ["/api/v1/jobs", "/api/v1/id", "/api/v1/jobs"]
        assert kept(state) == {f"127.0.0.1:{port}": "f" * 32}     # nothing confirmed: nothing written


# -- containers made while a bid awaits its answer (compute/node.py, executors/docker.py) ---------------------

IMAGE = "bacalhau/busybox:latest"
ROGUE = "mem-0000000000ee"      # a requester of the in-memory network that asks for bids and answers as it likes


@pytest.fixture
def engine() -> Iterator[Any]:
    import docker

    client = docker.from_env()
    yield client.api
    client.close()


def labelled(api: Any, node_id: str) -> list[dict[str, Any]]:
    return api.containers(all=True, filters={"label": f"{LABEL_NODE}={node_id}"})   # type: ignore[no-any-return]


async def until(predicate: Any, what: str, timeout: float = 15) -> None:
    """Poll `predicate` (a blocking call, in a thread) until it holds; the test fails after `timeout`."""
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.05)


def docker_job(image: str = IMAGE, *args: str) -> Job:
    return Job(spec=JobSpec(engine="docker", docker=DockerSpec(image=image, parameters=list(args) or ["true"])))


@asynccontextmanager
async def docker_node(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Node, InMemoryNetwork, Any, list[Any]]]:
    """A node (docker engine, 3 slots) on an in-memory network with a rogue requester on it: the node's
    ComputeProxy as the rogue, and the bid answers it heard."""
    network = InMemoryNetwork()
    rogue = network.transport(ROGUE)
    bids: list[Any] = []

    async def heard(peer_id: str, msg: m.BidResult) -> m.Ack:
        bids.append(msg)
        return m.Ack()

    rogue.register(m.ON_BID_COMPLETE, typed_handler(m.BidResult, heard))
    config = node_config(tmp_path / "node", engines=("docker",),
                         capacity=Resources(cpu=3 * DEFAULT_JOB_CPU, memory=10 * DEFAULT_JOB_MEMORY), **kw)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(config, NodeDeps(network=network)).run)
        yield node, network, ComputeProxy(rogue, 5.0), bids
        nursery.cancel_scope.cancel()


async def ask(proxy: ComputeProxy, node: Node, job: Job) -> str:
    execution_id = new_id()
    await proxy.ask_for_bid(node.node_id, m.AskForBidRequest(execution_id=execution_id, requester_id=ROGUE, job=job))
    return execution_id


async def test_bids_never_answered_hold_at_most_the_node_slots_of_containers_and_none_past_the_bid_timeout(
        tmp_path: Path, engine: Any) -> None:
    async with docker_node(tmp_path, bid_timeout=2.0) as (node, _, proxy, bids):
        asked = [await ask(proxy, node, docker_job()) for _ in range(8)]
        await until(lambda: len(labelled(engine, node.node_id)) == 3, "3 containers prepared")
        assert all(b.accepted for b in bids) and len(bids) == 8     # the bid says what it said before
        for _ in range(10):     # no more come: the rest of the bids are not prepared
            assert len(labelled(engine, node.node_id)) == 3
            await trio.sleep(0.05)
        labels = {c["Labels"][LABEL_EXECUTION] for c in labelled(engine, node.node_id)}
        assert labels <= set(asked)
        await until(lambda: not labelled(engine, node.node_id), "prepared containers removed at the bid timeout")
        results = tmp_path / "node" / "results"
        assert not results.exists() or not any(results.iterdir())     # nothing on disk for an unanswered bid


async def test_a_rejected_or_cancelled_bid_leaves_no_container_and_an_accepted_one_runs_in_its_own(
        tmp_path: Path, engine: Any) -> None:
    async with docker_node(tmp_path) as (node, _, proxy, _bids):
        since = int(time.time()) - 1
        rejected, cancelled, accepted = [await ask(proxy, node, docker_job(IMAGE, "echo", "hi")) for _ in range(3)]
        await until(lambda: len(labelled(engine, node.node_id)) == 3, "3 containers prepared")
        await proxy.bid_rejected(node.node_id, rejected, "another node")
        await proxy.cancel(node.node_id, cancelled, "the user cancelled")
        await proxy.bid_accepted(node.node_id, accepted)
        assert node.compute is not None
        with trio.fail_after(15):
            while (await node.compute._store.get(accepted)).state != ExecutionState.RUNNING or \
                    (await node.compute._store.get(accepted)).result is None:
                await trio.sleep(0.05)
        ran = await node.compute._store.get(accepted)
        assert ran.result is not None and ran.result.exit_code == 0 and ran.result.stdout_tail == "hi\n"
        await until(lambda: not labelled(engine, node.node_id), "no container left")
        # the accepted execution ran in the container made at its bid: the start made none of its own
        creates = engine.events(since=since, until=f"{time.time():.6f}", decode=True,
                                filters={"label": f"{LABEL_EXECUTION}={accepted}", "event": "create"})
        assert len(list(creates)) == 1, "the start created another container"


async def test_a_bid_for_an_image_not_here_is_the_same_bid_and_its_start_says_what_is_wrong(
        tmp_path: Path, engine: Any) -> None:
    missing = "bacalhau/not-here-prestart:none"
    async with docker_node(tmp_path) as (node, _, proxy, bids):
        execution_id = await ask(proxy, node, docker_job(missing))
        with trio.fail_after(10):
            while not bids:
                await trio.sleep(0.05)
        assert bids[0].accepted and bids[0].reason == ""
        assert node.compute is not None
        await proxy.bid_accepted(node.node_id, execution_id)
        with trio.fail_after(30):
            while not (ex := await node.compute._store.get(execution_id)).state.terminal:
                await trio.sleep(0.05)
        assert ex.state == ExecutionState.FAILED and "could not be pulled" in ex.reason, ex.reason
        assert not labelled(engine, node.node_id)


async def test_a_prepared_container_left_by_a_crash_is_removed_at_the_next_start(tmp_path: Path, engine: Any) -> None:
    @asynccontextmanager
    async def libp2p_node() -> AsyncIterator[Node]:     # (its node id is kept in its repo, unlike in memory)
        async with trio.open_nursery() as nursery:
            yield await nursery.start(Node(node_config(tmp_path / "node", engines=("docker",))).run)
            nursery.cancel_scope.cancel()

    async with libp2p_node() as node:
        node_id = node.node_id
    # what a kill -9 between a bid and its answer leaves: a created container with the node's labels
    leftover = engine.create_container(IMAGE, ["true"], labels={LABEL_NODE: node_id, LABEL_EXECUTION: new_id()})
    try:
        async with libp2p_node() as node:
            assert node.node_id == node_id
            assert not labelled(engine, node_id)
    finally:
        _remove(engine, leftover["Id"])
