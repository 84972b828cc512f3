"""Bugs reviewers found and left, each tested as the failure it was: a run ended by its own error (its timeout)
left running on its node; a bad result reference in an execution status kept a job in progress for good; the
in-memory transport's UnboundLocalError for a handler that ran on; an idle kept-alive connection a client
closed held open on the server until its keep-alive timeout."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import decode, ok_reply, parse_reply
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.errors import TransportError
from bacalhau.models import Engine, ExecutionState, Job, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.node import Node, NodeDeps
from tests.hostile.test_api import call


@asynccontextmanager
async def _cluster(tmp_path: Path, *, computes: int = 1, old_flow: bool = False,
                   **req_kw: object) -> AsyncIterator[tuple[Node, list[Node]]]:
    """A requester node and compute nodes on one in-memory network; `old_flow`: the computes stand in for
    nodes of before pre-approved asks (bid, bid-accepted, run-complete, result-accepted, publish-complete)."""
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False,
                                                  node_types=(NodeType.REQUESTER,), **req_kw),  # type: ignore[arg-type]
                                       NodeDeps(network=net)).run)
        nodes = []
        for i in range(computes):
            c = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,),
                                                    engines=("noop",)), NodeDeps(network=net)).run)
            if old_flow:
                del c.transport.handlers[m.ASK_FOR_BID_APPROVED]
            nodes.append(c)
        with trio.fail_after(5):
            while len(req.requester.nodes.alive()) < computes:
                await trio.sleep(0.05)
        yield req, nodes
        nursery.cancel_scope.cancel()


async def _ended(req: Node, job_id: str, within: float = 10) -> Job:
    with trio.fail_after(within):
        while not (await req.requester.store.get_job(job_id, full=False)).state.terminal:
            await req.requester.wait_for_change(job_id, 0.5)
    return await req.requester.store.get_job(job_id)


@pytest.mark.parametrize("old_flow", [False, True], ids=["preapproved", "old-flow"])
async def test_a_run_ended_by_its_timeout_ends_on_its_node_and_drain_does_not_wait_for_it(
        tmp_path: Path, old_flow: bool) -> None:
    """On main the node reported the timed-out run and kept it running (the requester fails the job and tells
    the node nothing): drain() waited its whole grace period, and the execution stayed busy."""
    async with _cluster(tmp_path, old_flow=old_flow) as (req, (node,)):
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, timeout=0.3,
                                                 noop=NoopSpec(stdout="slow\n", sleep=60)))
        done = await _ended(req, job.id)
        assert done.state == JobState.FAILED and "timed out" in done.reason, done.reason
        assert [e.state for e in done.executions] == [ExecutionState.FAILED]     # no retry: the job's own limit
        assert node.compute is not None
        ex_id = done.executions[0].id
        with trio.fail_after(5):
            while (local := await node.compute._store.get(ex_id)).state != ExecutionState.FAILED:
                await trio.sleep(0.02)
        assert local.result is not None and "timed out" in (local.result.error or "")
        with trio.fail_after(5):            # returns at once: nothing is running (on main: the 60 s grace)
            await node.compute.drain(60)


async def test_a_timed_out_run_whose_callback_was_lost_fails_its_job_without_a_retry(tmp_path: Path) -> None:
    """The reconcile pass reads the node's failed-with-its-error execution as the run-complete it missed: the
    job fails with the reason, as the callback would have had it, not retried elsewhere (as on main, where the
    node left it running: a guard for the fix above)."""
    async with _cluster(tmp_path, computes=2, reconcile_interval=0.3) as (req, nodes):
        for node in nodes:
            real_call = node.transport.call

            async def lossy(peer_id: str, protocol_id: str, payload: bytes, *, timeout: float,
                            real_call: Callable[..., Awaitable[bytes]] = real_call) -> bytes:
                if protocol_id == m.ON_RUN_COMPLETE:
                    raise TransportError("the callback was lost on the way (the test drops it)")
                return await real_call(peer_id, protocol_id, payload, timeout=timeout)

            node.transport.call = lossy  # type: ignore[method-assign]
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, timeout=0.3,
                                                 noop=NoopSpec(stdout="slow\n", sleep=60)))
        done = await _ended(req, job.id)
        assert done.state == JobState.FAILED and "timed out" in done.reason, done.reason
        assert [e.state for e in done.executions] == [ExecutionState.FAILED]


async def test_a_bad_result_ref_in_an_execution_status_fails_the_execution_and_the_job_is_retried(
        tmp_path: Path) -> None:
    """A node's execution status naming a result reference that is not ipfs://<CID>: on main building the
    publish-complete raised a validation error on every reconcile pass, the job in progress for good."""
    async with _cluster(tmp_path, computes=2, old_flow=True, reconcile_interval=0.3) as (req, nodes):
        lied: list[str] = []
        dropped: list[str] = []
        for node in nodes:
            handlers = node.transport.handlers
            real_status = handlers[m.EXECUTION_STATUS]

            async def lying(peer_id: str, payload: bytes, real: Callable[..., Awaitable[bytes]] = real_status) -> bytes:
                status = parse_reply(await real(peer_id, payload), m.ExecutionStatus)
                if status.state == ExecutionState.COMPLETED and not lied:
                    lied.append(status.execution_id)
                    return ok_reply(status.model_copy(update={"result_ref": "ipfs://not-a-cid/../../x"}))
                return ok_reply(status)

            handlers[m.EXECUTION_STATUS] = lying
            real_call = node.transport.call

            async def lossy(peer_id: str, protocol_id: str, payload: bytes, *, timeout: float,
                            real_call: Callable[..., Awaitable[bytes]] = real_call) -> bytes:
                if protocol_id == m.ON_PUBLISH_COMPLETE:
                    ex_id = decode(payload, m.PublishComplete).execution_id
                    if dropped in ([], [ex_id]):       # the first execution's, for good: the reconcile pass hears it
                        dropped[:] = [ex_id]
                        raise TransportError("the callback was lost on the way (the test drops it)")
                return await real_call(peer_id, protocol_id, payload, timeout=timeout)

            node.transport.call = lossy  # type: ignore[method-assign]
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="done\n")))
        done = await _ended(req, job.id, within=15)
        assert lied == dropped and len(lied) == 1
        bad = [e for e in done.executions if e.id == lied[0]]
        assert bad and bad[0].state == ExecutionState.FAILED and "bad result reference" in bad[0].reason, bad
        assert bad[0].result_ref == ""
        assert done.state == JobState.COMPLETED, done.reason        # its retry ran
        assert any(e.state == ExecutionState.COMPLETED and e.result_ref.startswith("ipfs://")
                   for e in done.executions)


async def test_an_in_memory_call_whose_handler_runs_on_fails_as_a_transport_error() -> None:
    net = InMemoryNetwork()
    net.latency = 0.001         # the path with a simulated network, where the handler is shielded and bounded
    a, b = net.transport("a"), net.transport("b")

    async def stuck(peer_id: str, payload: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    b.handlers["/test/stuck/1.0.0"] = stuck
    with trio.fail_after(5), pytest.raises(TransportError, match="ran past"):
        await a.call("b", "/test/stuck/1.0.0", b"{}", timeout=0.05)


@pytest.fixture
async def long_keep_alive_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    from hypercorn.config import Config

    from tests.conftest import node_config

    monkeypatch.setattr(Config, "keep_alive_timeout", 60.0)    # the API's Config() reads it when it starts
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",)),
                                        NodeDeps(network=InMemoryNetwork())).run)
        yield node
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_the_client_closes_is_closed_by_the_server_at_once(
        long_keep_alive_node: Node) -> None:
    """On main the server kept its side open (CLOSE-WAIT) and the connection's task alive until the keep-alive
    timeout: a client opening and closing connections quickly held each one on the server that long."""
    from tests.hostile.test_api_cost_hostile import (
        _closed_by_server,
        _connect,
        _connection_tasks,
        _get,
        _read_answer,
    )

    port = long_keep_alive_node.api_port
    before = _connection_tasks()
    s = await trio.to_thread.run_sync(_connect, port)
    try:
        await trio.to_thread.run_sync(s.sendall, _get(port, "/api/v1/version"))
        assert (await trio.to_thread.run_sync(_read_answer, s)).startswith(b"HTTP/1.1 200")
        await trio.to_thread.run_sync(s.shutdown, socket.SHUT_WR)
        # the keep-alive time is 60 s: closed within 10 is the EOF's doing
        assert await trio.to_thread.run_sync(_closed_by_server, s, 10.0), "the server kept its side open"
    finally:
        s.close()
    with trio.fail_after(10):
        while _connection_tasks() > before:
            await trio.sleep(0.02)
    status, _ = await call(port, "GET", "/api/v1/version")
    assert status == 200


async def test_a_request_sent_with_its_eof_is_still_answered(long_keep_alive_node: Node) -> None:
    """A client that sends its request and closes its side at once (`nc -N`) is answered as before: the EOF
    ends the connection only once no request is in progress."""
    from tests.hostile.test_api_cost_hostile import _closed_by_server, _connect, _get, _read_answer

    port = long_keep_alive_node.api_port
    s = await trio.to_thread.run_sync(_connect, port)
    try:
        await trio.to_thread.run_sync(s.sendall, _get(port, "/api/v1/version"))
        await trio.to_thread.run_sync(s.shutdown, socket.SHUT_WR)
        assert (await trio.to_thread.run_sync(_read_answer, s)).startswith(b"HTTP/1.1 200")
        assert await trio.to_thread.run_sync(_closed_by_server, s, 10.0), "the server kept its side open"
    finally:
        s.close()


async def test_a_node_that_takes_asks_and_never_answers_delays_at_most_one_job_at_a_time(tmp_path: Path) -> None:
    """One node is asked per plain job: on main a silent node cost each job placed on it the whole call
    timeout, and it kept being chosen (it runs nothing: it looks idle). Now it is left out for a while after an
    ask goes unanswered (requester/silent.py). The call timeout is 1 s here, 10 s by default."""
    async with _cluster(tmp_path, computes=2, call_timeout=1.0) as (req, (silent, good)):
        async def never(peer_id: str, payload: bytes) -> bytes:
            await trio.sleep_forever()
            raise AssertionError

        silent.transport.handlers[m.ASK_FOR_BID_APPROVED] = never
        silent.transport.handlers[m.ASK_FOR_BID] = never
        delayed = 0
        with trio.fail_after(30):
            for _ in range(20):
                job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
                done = await _ended(req, job.id)
                assert done.state == JobState.COMPLETED, done.reason
                delayed += any(e.node_id == silent.node_id for e in done.executions)
        assert 1 <= delayed <= 2, delayed      # its first ask (and a second once it may be asked again)
        assert req.requester is not None and silent.node_id in req.requester._silent.left_out()
